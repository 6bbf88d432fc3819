"""Induction heads: attention-pattern scores, OV/QK circuits and composition scores.

The scores follow the analysis of Olsson et al. (2022), "In-context Learning and Induction
Heads", and the circuit view of Elhage et al. (2021), "A Mathematical Framework for
Transformer Circuits". Matrices use TransformerLens's row-vector convention: a residual
vector ``x`` (a row) is read by a head as ``x @ W_Q``, and the head writes ``z @ W_O``.

A repeated random sequence is laid out ``[BOS, t_1 ... t_n, t_1 ... t_n]`` (length
``2 n + 1``). At query position ``q`` of the repeat (``q > n``) the earlier copy of the
current token sits at key ``q - n`` and the token that followed it at key ``q - n + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

__all__ = [
    "SCORE_NAMES",
    "ablation_hooks",
    "attention_pattern",
    "composition_baseline",
    "composition_scores",
    "corrupt_repeat",
    "diagonal_argmax_fraction",
    "duplicate_token_score",
    "find_heads",
    "full_ov_circuit",
    "head_copying_score",
    "head_scores",
    "induction_score",
    "input_patch_kept",
    "k_composed_qk",
    "k_composition_qk_circuit",
    "k_composition_score",
    "k_composition_scores",
    "kept_share",
    "mask_scores",
    "ov_circuit",
    "per_token_loss",
    "positional_qk_circuit",
    "previous_token_score",
    "qk_circuit",
    "random_causal_patterns",
    "repeat_loss",
    "repeat_loss_metric",
    "repeated_tokens",
    "resample_ablate",
    "resample_hook",
    "single_token_ids",
    "synthetic_patterns",
]

SCORE_NAMES = ("previous_token", "duplicate_token", "induction")


# --- data, losses and ablations ---------------------------------------------------------------------------------


def repeated_tokens(
    model: HookedTransformer, seq_len: int, n: int = 32, seed: int = 0, vocab: Int[Tensor, "v"] | None = None
) -> Int[Tensor, "n 2*seq_len+1"]:
    """``n`` sequences ``[BOS, random tokens, the same tokens again]``, reproducible from ``seed``.

    The random tokens are drawn without replacement within a sequence (so each token of the
    first half occurs once there) from ``vocab`` (default: every id but the special tokens).
    """
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id if tokenizer is not None else 0
    if vocab is None:
        specials = set(tokenizer.all_special_ids) if tokenizer is not None else {bos}
        vocab = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in specials])
    if len(vocab) < seq_len:
        raise ValueError(f"seq_len={seq_len} needs at least that many distinct tokens; vocab has {len(vocab)}.")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.stack([vocab[torch.randperm(len(vocab), generator=gen)[:seq_len]] for _ in range(n)])
    return torch.cat([torch.full((n, 1), bos), picks, picks], dim=1).to(model.cfg.device)


def single_token_ids(model: HookedTransformer, words: Sequence[str]) -> Int[Tensor, "w"]:
    """Ids of the ``words`` that are one token each, written with a leading space (GPT-2 style)."""
    specials = set(model.tokenizer.all_special_ids)
    found = []
    for word in words:
        try:
            ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
        except Exception:  # a word-level tokenizer without an unknown token rejects new words
            continue
        if len(ids) == 1 and ids[0] not in specials:
            found.append(ids[0])
    return torch.tensor(found, dtype=torch.long)


def per_token_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos-1"]:
    """Next-token cross-entropy at every position (position ``i`` predicts token ``i + 1``)."""
    with torch.no_grad():
        logprobs = model(tokens).log_softmax(-1)
    return -logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def repeat_loss_metric(tokens: Int[Tensor, "batch pos"], seq_len: int) -> Callable[[Tensor], Tensor]:
    """A metric (logits -> 0-d tensor) for `mi_course.patching`: the mean loss on the repeat's tokens 2 ... seq_len.

    The first token of the repeat is left out: nothing earlier says it comes next.
    """

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        logprobs = logits[:, seq_len + 1 : -1].log_softmax(-1)
        return -logprobs.gather(-1, tokens[:, seq_len + 2 :, None].to(logits.device)).mean()

    return metric


def repeat_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], seq_len: int, fwd_hooks=()) -> float:
    """Mean loss on the predictable part of the repeat (its tokens 2 ... seq_len), hooks applied."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return repeat_loss_metric(tokens, seq_len)(logits).item()


def kept_share(clean: float | Tensor, intervened: float | Tensor, baseline: float | Tensor) -> float | Tensor:
    """The course's normalised metric: 1 = the clean behaviour, 0 = the baseline (behaviour removed).

    ``1 - mi_course.patching.normalised_effect``; works elementwise on tensors of results too.
    """
    return (intervened - baseline) / (clean - baseline)


def corrupt_repeat(tokens: Int[Tensor, "batch pos"], seq_len: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """A corrupted batch for patching an induction circuit: each sequence replaced by another one of the batch.

    Every token (hence what a previous-token head writes about it) comes from another random
    run, while each corrupted input is still a realistic one. Uses
    `mi_course.patching.resample_index`, so the batch needs at least 2 sequences.
    """
    from mi_course.patching import resample_index

    return tokens[resample_index(tokens.shape[0], seed=seed).to(tokens.device)].clone()


def resample_ablate(
    z: Float[Tensor, "batch pos head d_head"], head: int, source: Int[Tensor, "batch"]
) -> Float[Tensor, "batch pos head d_head"]:
    """A copy of ``z`` where sequence ``i`` gets head ``head``'s output from sequence ``source[i]``."""
    out = z.clone()
    out[:, :, head] = z[source, :, head]
    return out


def resample_hook(head: int, source: Int[Tensor, "batch"]) -> Callable[..., Tensor]:
    """A ``hook_z`` hook that resample-ablates one head (see `resample_ablate`)."""
    return lambda z, hook=None: resample_ablate(z, head, source.to(z.device))


def ablation_hooks(heads: list[tuple[int, int]], how: str, source: Int[Tensor, "batch"] | None = None) -> list[tuple[str, Callable]]:
    """Forward hooks that ablate ``heads`` (``(layer, head)`` pairs) at ``hook_z``.

    ``how`` is ``"mean"`` or ``"zero"`` (`mi_course.patching.ablate_head_hook`) or
    ``"resample"`` (`resample_hook`, which needs ``source``).
    """
    from mi_course.patching import ablate_head_hook

    if how == "resample" and source is None:
        raise ValueError("resample ablation needs `source`: for each sequence, the sequence to take the output from.")
    return [
        (f"blocks.{layer}.attn.hook_z", resample_hook(head, source) if how == "resample" else ablate_head_hook(head, how))
        for layer, head in heads
    ]


# --- attention-pattern scores -----------------------------------------------------------


def attention_pattern(
    q: Float[Tensor, "batch pos head d_head"], k: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch head q k"]:
    """Causal attention pattern from queries and keys, as a TransformerLens head computes it.

    Scores ``q . k / sqrt(d_head)``; a query sees only keys at its own position or before
    (the others get ``-inf``); a softmax over the keys turns each row into a distribution.
    """
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    n_pos = q.shape[1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)



def previous_token_score(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, "head"]:
    """Mean attention from each query to the position just before it (all queries but the first)."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def duplicate_token_score(pattern: Float[Tensor, "batch head q k"], seq_len: int) -> Float[Tensor, "head"]:
    """Mean attention from each query of the repeat to the earlier copy of its own token."""
    return pattern.diagonal(offset=-seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, -1))


def induction_score(pattern: Float[Tensor, "batch head q k"], seq_len: int) -> Float[Tensor, "head"]:
    """Mean attention from each query of the repeat to the token after the earlier copy of its token."""
    return pattern.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, -1))


def mask_scores(pattern: Float[Tensor, "batch head q k"], tokens: Int[Tensor, "batch q"]) -> dict[str, Float[Tensor, "head"]]:
    """The three scores for any token sequence, from where tokens actually repeat.

    For each query, the attention summed over keys of the right kind (the previous position;
    earlier copies of the query's token; positions right after such copies), averaged over
    the queries that have at least one such key (NaN for a head when none has). On a
    ``repeated_tokens`` batch this agrees with the three diagonal scores above.
    """
    q = torch.arange(tokens.shape[1])
    earlier = q[None, :] < q[:, None]  # [q, k]: key strictly before query
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    masks = {
        "previous_token": (q[None, :] == q[:, None] - 1).expand_as(same),
        "duplicate_token": same & earlier,
        # key k follows an earlier copy of the query's token: tokens[k - 1] == tokens[q], k - 1 < q
        "induction": torch.nn.functional.pad(same & earlier, (1, 0))[..., :-1] & (q[None, :] <= q[:, None]),
    }
    out = {}
    for name, mask in masks.items():
        mask = mask.to(pattern.device)
        has_key = mask.any(-1)  # [batch, q]
        per_query = (pattern * mask[:, None]).sum(-1)  # [batch, head, q]
        total = (per_query * has_key[:, None]).sum(dim=(0, -1))
        out[name] = total / has_key.sum()
    return out


def head_scores(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], seq_len: int) -> dict[str, Float[Tensor, "layer head"]]:
    """Previous-token, duplicate-token and induction scores of every head on a repeated batch."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    patterns = [cache[name] for name in names]
    return {
        "previous_token": torch.stack([previous_token_score(p) for p in patterns]),
        "duplicate_token": torch.stack([duplicate_token_score(p, seq_len) for p in patterns]),
        "induction": torch.stack([induction_score(p, seq_len) for p in patterns]),
    }


def find_heads(
    scores: Float[Tensor, "layer head"],
    threshold: float,
    *,
    layers: Iterable[int] | None = None,
    fallback: str | None = None,
) -> list[tuple[int, int]]:
    """The ``(layer, head)`` pairs whose score exceeds ``threshold``, highest first.

    ``layers`` restricts the search to those layers (default: all). With ``fallback`` (the
    kind of head, e.g. ``"induction"``), a model where no head exceeds the threshold gets its
    top-scoring head instead, and a printed line says so: analyses that need a head then
    still run, on a head that does not have the behaviour (a model with random weights, say).
    """
    chosen = list(range(scores.shape[0])) if layers is None else sorted(set(layers))
    allowed = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    allowed[chosen] = True
    picked = [(float(scores[l, h]), l, h) for l, h in ((scores > threshold) & allowed).nonzero().tolist()]
    found = [(l, h) for _, l, h in sorted(picked, reverse=True)]
    if found or fallback is None:
        return found
    if not allowed.any():
        raise ValueError(f"no layer to look for a {fallback} head in (layers={chosen})")
    best = int(scores.masked_fill(~allowed, float("-inf")).flatten().argmax())
    layer, head = divmod(best, scores.shape[1])
    where = "" if layers is None else f" in layer{'s' if len(chosen) > 1 else ''} {_layer_span(chosen)}"
    print(
        f"No {fallback} head scores above {threshold}{where} on this model; using the top-scoring one instead, "
        f"L{layer}H{head} (score {float(scores[layer, head]):.2f}): what follows describes a head without this behaviour."
    )
    return [(layer, head)]


def _layer_span(layers: list[int]) -> str:
    """``[1, 2, 3]`` -> ``"1-3"``; anything else as a comma-separated list."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


# --- synthetic attention patterns (examples and check inputs) -----------------------------


def random_causal_patterns(batch: int, heads: int, n_pos: int, seed: int, sharpness: float = 2.0) -> Float[Tensor, "batch head q k"]:
    """Random causal attention patterns: a softmax of Gaussian scores over keys ``k <= q``."""
    gen = torch.Generator().manual_seed(seed)
    scores = sharpness * torch.randn(batch, heads, n_pos, n_pos, generator=gen)
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def synthetic_patterns(seq_len: int, batch: int = 2, seed: int = 0, noise: float = 0.1) -> Float[Tensor, "batch 4 q k"]:
    """Four idealised heads on a repeated sequence, mixed with a little random attention.

    Head 0 attends to the previous token, head 1 to the earlier copy of the current token,
    head 2 to the token after that copy (induction), head 3 uniformly. Heads 1 and 2 attend
    to BOS (position 0) where there is no earlier copy.
    """
    n_pos = 2 * seq_len + 1
    ideal = torch.zeros(4, n_pos, n_pos)
    for q in range(n_pos):
        ideal[0, q, max(q - 1, 0)] = 1.0
        ideal[1, q, q - seq_len if q > seq_len else 0] = 1.0
        ideal[2, q, q - seq_len + 1 if q > seq_len else 0] = 1.0
        ideal[3, q, : q + 1] = 1.0 / (q + 1)
    noisy = random_causal_patterns(batch, 4, n_pos, seed)
    return (1 - noise) * ideal + noise * noisy


# --- circuits ----------------------------------------------------------------------------


def qk_circuit(model: HookedTransformer, layer: int, head: int) -> Float[Tensor, "d_model d_model"]:
    """``W_Q W_K^T`` of one head: the bilinear form from (query residual, key residual) to score."""
    return model.W_Q[layer, head] @ model.W_K[layer, head].T


def ov_circuit(model: HookedTransformer, layer: int, head: int) -> Float[Tensor, "d_model d_model"]:
    """``W_V W_O`` of one head: what the head writes for each source residual vector it attends to."""
    return model.W_V[layer, head] @ model.W_O[layer, head]


def full_ov_circuit(
    model: HookedTransformer, layer: int, head: int, tokens: Int[Tensor, "t"] | None = None
) -> Float[Tensor, "t t"]:
    """``W_E W_V W_O W_U``: row ``i`` holds the logits the head adds when it attends to token ``i``.

    Only the token path is kept (no positional embedding, layer norm or earlier layers).
    ``tokens`` restricts rows and columns to some tokens (GPT-2's full matrix has 2.5e9 entries).
    """
    W_E = model.W_E if tokens is None else model.W_E[tokens]
    W_U = model.W_U if tokens is None else model.W_U[:, tokens]
    return (W_E @ model.W_V[layer, head]) @ model.W_O[layer, head] @ W_U


def diagonal_argmax_fraction(matrix: Float[Tensor, "n n"]) -> float:
    """Fraction of rows ``i`` whose largest entry is in column ``i``."""
    return (matrix.argmax(dim=-1) == torch.arange(matrix.shape[0], device=matrix.device)).float().mean().item()


def head_copying_score(model: HookedTransformer, layer: int, head: int, tokens: Int[Tensor, "t"] | None = None, chunk: int = 512) -> float:
    """Fraction of source tokens whose own logit is the top one of all ``d_vocab`` in the full OV circuit.

    ``tokens`` picks the source tokens (rows; default all); the argmax runs over every output
    token. Computed in chunks of rows, so that GPT-2's 50k x 50k matrix is never held at once.
    """
    tokens = torch.arange(model.cfg.d_vocab, device=model.W_E.device) if tokens is None else tokens
    hits = 0
    with torch.no_grad():
        for start in range(0, len(tokens), chunk):
            rows = tokens[start : start + chunk]
            logits = model.W_E[rows] @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U
            hits += int((logits.argmax(-1) == rows).sum())
    return hits / len(tokens)


def positional_qk_circuit(model: HookedTransformer, layer: int, head: int) -> Float[Tensor, "pos pos"]:
    """Attention scores from positional embeddings alone, ``W_pos W_Q W_K^T W_pos^T``, causally masked.

    Row ``q`` says which key positions a query at position ``q`` prefers through position
    information only (the token path and layer norm are left out).
    """
    scores = model.W_pos @ qk_circuit(model, layer, head) @ model.W_pos.T
    causal = torch.ones_like(scores, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf"))


def k_composed_qk(
    W_E: Float[Tensor, "d_vocab d_model"], W_QK: Float[Tensor, "d_model d_model"], W_OV: Float[Tensor, "d_model d_model"]
) -> Float[Tensor, "d_vocab d_vocab"]:
    """Entry ``[i, j]``: attention score of a query token ``i`` for a key whose previous token is ``j``.

    The query side reads the token embedding; the key side reads what the previous-token head
    wrote there, ``W_E W_OV``. An induction head makes this matrix diagonal-heavy.
    """
    return W_E @ W_QK @ (W_E @ W_OV).T


def k_composition_qk_circuit(
    model: HookedTransformer, previous: tuple[int, int], induction: tuple[int, int], tokens: Int[Tensor, "t"] | None = None
) -> Float[Tensor, "t t"]:
    """`k_composed_qk` of a model's previous-token head ``(layer, head)`` and induction head.

    ``tokens`` restricts query and key tokens to a subset (default: the whole vocabulary).
    """
    W_E = model.W_E if tokens is None else model.W_E[tokens]
    return k_composed_qk(W_E, qk_circuit(model, *induction), ov_circuit(model, *previous))


def k_composition_score(W_QK: Float[Tensor, "d_model d_model"], W_OV: Float[Tensor, "d_model d_model"]) -> float:
    """How much a later head's keys read what an earlier head writes: ``|W_QK W_OV^T| / (|W_QK| |W_OV|)``.

    Frobenius norms (Elhage et al. 2021). Row-vector convention: the key residual is
    ``x @ W_OV``, so the composed bilinear form is ``W_QK @ W_OV.T``.
    """
    return (torch.linalg.matrix_norm(W_QK @ W_OV.T) / (torch.linalg.matrix_norm(W_QK) * torch.linalg.matrix_norm(W_OV))).item()


def composition_scores(model: HookedTransformer, kind: str) -> Float[Tensor, "layer1 head1 layer2 head2"]:
    """Q-, K- or V-composition score of every (earlier head, later head) pair; 0 where layer2 <= layer1.

    How much the later head's queries (``kind="q"``), keys (``"k"``) or values (``"v"``) read
    what the earlier head writes (Elhage et al. 2021): ``|A B| / (|A| |B|)`` (Frobenius norms)
    with ``A = W_OV`` of the earlier head and ``B`` the later head's ``W_QK`` (q), ``W_QK^T``
    (k) or ``W_OV`` (v), in the row-vector convention. Computed from ``d_head x d_head`` Gram
    matrices (``|X|_F^2 = tr(X^T X)``), so that GPT-2's 144 x 144 pairs take a moment.
    """
    if kind not in ("q", "k", "v"):
        raise ValueError(f"kind must be 'q', 'k' or 'v', not {kind!r}.")
    with torch.no_grad():
        W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O  # [L, H, d_model, d_head] / [L, H, d_head, d_model]
        # the later head's B = X Y^T: X reads the earlier head's output, Y is its other factor
        X, Y = {"q": (W_Q, W_K), "k": (W_K, W_Q), "v": (W_V, W_O.transpose(-1, -2))}[kind]
        gram_v = W_V.transpose(-1, -2) @ W_V  # [L, H, d_head, d_head]
        gram_o = W_O @ W_O.transpose(-1, -2)
        gram_x, gram_y = X.transpose(-1, -2) @ X, Y.transpose(-1, -2) @ Y
        ov_norm2 = (gram_v * gram_o).sum(dim=(-2, -1))  # |W_V W_O|^2 = tr(G_V G_O), both symmetric
        later_norm2 = (gram_x * gram_y).sum(dim=(-2, -1))  # |X Y^T|^2
        # |W_V1 M Y2^T|^2 = tr(M^T G_V1 M G_Y2) with M = W_O1 X2: [L1, H1, L2, H2, d_head, d_head]
        M = torch.einsum("lhrd,mgds->lhmgrs", W_O, X)
        composed2 = torch.einsum("lhmgrs,lhrt,lhmgtu,mgus->lhmg", M, gram_v, M, gram_y)
        scores = (composed2.clamp(min=0) / (ov_norm2[:, :, None, None] * later_norm2[None, None])).sqrt()
    L = model.cfg.n_layers
    later = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
    return torch.where(later.to(scores.device), scores, torch.zeros_like(scores)).cpu()


def k_composition_scores(model: HookedTransformer) -> Float[Tensor, "layer1 head1 layer2 head2"]:
    """K-composition score of every (earlier head, later head) pair (`composition_scores` with ``"k"``)."""
    return composition_scores(model, "k")


def input_patch_kept(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    seq_len: int,
    senders: Sequence[tuple[int, int]],
    receiver: tuple[int, int],
    baseline: float,
) -> dict[str, float]:
    """Patch the edges ``senders -> receiver`` into the receiver's query, key or value input, one input at a time.

    Each edge carries the sender's output on ``corrupted`` instead of ``tokens`` (edge patching,
    `mi_course.circuits`); everything else is the clean run. Returns, for ``"q"``, ``"k"`` and
    ``"v"``, the loss on the repeat as the normalised metric `kept_share` (1 = clean, 0 = ``baseline``).
    """
    from mi_course.circuits import Edge, run_with_edges_patched, sender_outputs

    metric = repeat_loss_metric(tokens, seq_len)
    with torch.no_grad():
        clean = metric(model(tokens)).item()
        outputs = sender_outputs(model, corrupted)
        kept = {}
        for kind in "qkv":
            edges = [Edge(f"L{l}H{h}", f"L{receiver[0]}H{receiver[1]}.{kind}") for l, h in senders]
            logits = run_with_edges_patched(model, tokens, None, edges, corrupted_outputs=outputs)
            kept[kind] = float(kept_share(clean, metric(logits).item(), baseline))
    return kept


def composition_baseline(d_model: int, d_head: int, n: int = 200, seed: int = 0) -> Float[Tensor, "n"]:
    """K-composition scores of random pairs: QK and OV built from Gaussian ``d_model x d_head`` factors.

    Random low-rank matrices of the real shapes say what score to expect by chance.
    """
    gen = torch.Generator().manual_seed(seed)

    def low_rank() -> Tensor:
        return torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_head, d_model, generator=gen)

    return torch.tensor([k_composition_score(low_rank(), low_rank()) for _ in range(n)])
