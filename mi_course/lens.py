"""The logit lens and the tuned lens: reading predictions out of intermediate layers.

The logit lens (nostalgebraist 2020) decodes an intermediate residual stream with the
model's own final layer norm and unembedding, as if the remaining layers were skipped.
The tuned lens (Belrose et al. 2023) first passes each layer's residual through an affine
"translator", trained so that the decoded distribution matches the model's final one (in
KL). Each translator is written in residual form, h + h A + b, and starts at A = 0, b = 0,
so an untrained tuned lens *is* the logit lens.

Both are correlational readouts: they show what a linear decoder can read at a layer, not
what the model uses (for that, intervene). Residual stacks have one entry per layer's
``resid_pre`` plus the final ``resid_post``: entry ``l`` is the stream that layer ``l``
reads, and the last entry is the stream the unembedding reads.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import ActivationCache, HookedTransformer

from mi_course.residual import apply_final_ln_scale, at_pos

__all__ = [
    "TunedLens",
    "answer_prob",
    "answer_rank",
    "component_logits",
    "decode",
    "kl_per_layer",
    "kl_to_final",
    "layer_labels",
    "lens_answer_stats",
    "lens_top_tokens",
    "name_control",
    "logit_lens",
    "resid_hook_names",
    "residual_stack",
    "top_tokens",
    "train_tuned_lens",
]


def resid_hook_names(model: HookedTransformer) -> list[str]:
    """The hooks of a residual stack: every layer's ``resid_pre``, then the last ``resid_post``."""
    n = model.cfg.n_layers
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]


def layer_labels(model: HookedTransformer) -> list[str]:
    """Labels of the residual stack's entries: ``embed``, ``after L0``, ..., ``after L{n-1}``."""
    return ["embed"] + [f"after L{layer}" for layer in range(model.cfg.n_layers)]


def residual_stack(
    model: HookedTransformer, tokens_or_cache: Int[Tensor, "batch pos"] | ActivationCache
) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
    """Every layer's input residual plus the final residual, from tokens or an existing cache."""
    names = resid_hook_names(model)
    if isinstance(tokens_or_cache, ActivationCache):
        missing = [name for name in names if name not in tokens_or_cache.cache_dict]
        if missing:
            raise KeyError(f"the cache lacks {missing}; run model.run_with_cache(tokens) without a names_filter that drops them.")
        cache = tokens_or_cache
    else:
        tokens = tokens_or_cache
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}; use tokens[None] for one prompt.")
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names])


def _check_d_model(model: HookedTransformer, resid: Tensor) -> None:
    if resid.shape[-1] != model.cfg.d_model:
        raise ValueError(f"the last dimension must be d_model={model.cfg.d_model}, got shape {tuple(resid.shape)}.")


def decode(model: HookedTransformer, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits read from a residual stream by the final layer norm and the unembedding."""
    _check_d_model(model, resid)
    ln_final = getattr(model, "ln_final", None)
    return model.unembed(ln_final(resid) if ln_final is not None else resid)


@torch.no_grad()
def logit_lens(
    model: HookedTransformer, tokens_or_cache: Int[Tensor, "batch pos"] | ActivationCache, pos: int | None = None
) -> Float[Tensor, "layer_plus_1 batch pos d_vocab"] | Float[Tensor, "layer_plus_1 batch d_vocab"]:
    """The logit lens at every layer and position; the last entry equals the model's logits.

    With ``pos`` (e.g. -1), only that position is decoded, and the result has no position
    dimension: ``[n_layers + 1, batch, d_vocab]``. A large vocabulary (GPT-2's 50,257 tokens)
    makes every decoded position costly, so decode only the positions you read.
    """
    stack = residual_stack(model, tokens_or_cache)
    return decode(model, stack if pos is None else stack[:, :, pos])


def _check_answers(logits: Tensor, answers: Tensor) -> None:
    if answers.shape != logits.shape[:-1]:
        raise ValueError(
            f"answers must have one token id per distribution, shape {tuple(logits.shape[:-1])}, got {tuple(answers.shape)}; "
            "use answers.expand(...) to repeat them over layers."
        )


def answer_rank(logits: Float[Tensor, "... d_vocab"], answers: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """The answer's rank among all tokens: 1 when it is the top prediction (ties count in its favour)."""
    _check_answers(logits, answers)
    answer_logit = logits.gather(-1, answers.unsqueeze(-1))
    return (logits > answer_logit).sum(-1) + 1


def answer_prob(logits: Float[Tensor, "... d_vocab"], answers: Int[Tensor, "..."]) -> Float[Tensor, "..."]:
    """The probability the (lens) distribution gives to the answer."""
    _check_answers(logits, answers)
    return logits.softmax(-1).gather(-1, answers.unsqueeze(-1)).squeeze(-1)


def top_tokens(model: HookedTransformer, logits: Float[Tensor, "d_vocab"], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable tokens of one distribution as (string, probability) pairs."""
    if logits.ndim != 1:
        raise ValueError(f"expected the logits of one position, shape [d_vocab], got {tuple(logits.shape)}.")
    values, indices = logits.detach().softmax(-1).topk(k)
    return [(model.to_single_str_token(int(i)), float(v)) for v, i in zip(values, indices)]


@torch.no_grad()
def lens_top_tokens(
    model: HookedTransformer, tokens: Int[Tensor, "pos"], tuned: TunedLens | None = None, pos: int = -1, k: int = 5
) -> list[dict]:
    """For one prompt, layer by layer: the top ``k`` tokens at ``pos`` under the logit lens (and the tuned lens).

    Rows are dicts with keys ``layer``, ``logit lens`` and, when ``tuned`` is given, ``tuned lens``.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one prompt, shape [pos], got {tuple(tokens.shape)}.")
    stack = residual_stack(model, tokens[None])[:, 0, pos]
    readouts = {"logit lens": decode(model, stack)}
    if tuned is not None:
        readouts["tuned lens"] = decode(model, tuned(stack))
    return [
        {"layer": label, **{name: top_tokens(model, logits[i], k) for name, logits in readouts.items()}}
        for i, label in enumerate(layer_labels(model))
    ]


def component_logits(
    model: HookedTransformer, cache: ActivationCache, output: Float[Tensor, "batch d_model"], pos: int | Int[Tensor, "batch"] = -1
) -> Float[Tensor, "batch d_vocab"]:
    """One component's direct effect on every logit: its output through the frozen final norm and W_U.

    Decoding a single head's or MLP's output with a layer norm of its own would be
    meaningless (the norm's scale belongs to the whole residual), so the scale the cache
    recorded at ``pos`` is used, as in direct logit attribution; biases are left out.
    Summed over all components (plus the biases) this gives the model's logits.
    """
    _check_d_model(model, output)
    if output.ndim != 2:
        raise ValueError(f"output must be [batch, d_model] at one position, got shape {tuple(output.shape)}; index the position first.")
    scaled = apply_final_ln_scale(model, output, cache, pos)
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    return (scaled * weight if weight is not None else scaled) @ model.W_U


class TunedLens(nn.Module):
    """One affine translator per layer, h -> h + h A_l + b_l, starting at the identity (A = 0, b = 0).

    The final residual needs no translator: the model's own decoding applies to it.
    """

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.b = nn.Parameter(torch.zeros(n_layers, d_model))

    def forward(self, stack: Float[Tensor, "layer_plus_1 *rest d_model"]) -> Float[Tensor, "layer_plus_1 *rest d_model"]:
        """Translate every layer's residual; the last (final) entry passes through unchanged."""
        n_layers, d_model = self.A.shape[:2]
        if stack.shape[0] != n_layers + 1 or stack.shape[-1] != d_model:
            raise ValueError(f"expected a residual stack of shape [{n_layers + 1}, ..., {d_model}] (see residual_stack), got {tuple(stack.shape)}.")
        inner = stack[:-1]
        flat = inner.reshape(n_layers, -1, d_model)
        translated = flat + torch.bmm(flat, self.A) + self.b[:, None]
        return torch.cat([translated.reshape(inner.shape), stack[-1:]])


def _kl_from_final(lens_logits: Float[Tensor, "layer n d_vocab"], final_logits: Float[Tensor, "n d_vocab"]) -> Float[Tensor, "layer"]:
    """Mean over tokens of KL(final || lens), in nats, per layer."""
    final_logp = final_logits.log_softmax(-1)
    lens_logp = lens_logits.log_softmax(-1)
    return (final_logp.exp() * (final_logp - lens_logp)).sum(-1).mean(-1)


def _flatten(model: HookedTransformer, stack: Tensor) -> Float[Tensor, "layer_plus_1 n d_model"]:
    if stack.ndim < 3 or stack.shape[0] != model.cfg.n_layers + 1:
        raise ValueError(
            f"expected a residual stack [n_layers + 1 = {model.cfg.n_layers + 1}, ..., d_model] (see residual_stack), got {tuple(stack.shape)}."
        )
    _check_d_model(model, stack)
    return stack.reshape(stack.shape[0], -1, stack.shape[-1])


_DECODE_BUDGET = 1 << 25  # logits decoded at once by kl_to_final: 128 MiB of float32


def _tokens_per_chunk(model: HookedTransformer, n_entries: int, batch_size: int | None) -> int:
    """``batch_size``, or at most 4096 tokens such that their logits at every entry fit the budget."""
    if batch_size is not None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        return batch_size
    return max(1, min(4096, _DECODE_BUDGET // (n_entries * model.cfg.d_vocab)))


@torch.no_grad()
def kl_to_final(
    model: HookedTransformer, stack: Float[Tensor, "layer_plus_1 *tokens d_model"], lens: TunedLens | None = None, batch_size: int | None = None
) -> Float[Tensor, "layer_plus_1"]:
    """Mean KL(final distribution || lens distribution) at every layer: the logit lens, or ``lens``.

    Tokens are decoded ``batch_size`` at a time; by default 4096, or fewer when the model's
    vocabulary is large (GPT-2: about 50), so that the logits of a chunk take at most 128 MiB.
    """
    flat = _flatten(model, stack)
    batch_size = _tokens_per_chunk(model, flat.shape[0], batch_size)
    total = torch.zeros(flat.shape[0])
    for start in range(0, flat.shape[1], batch_size):
        chunk = flat[:, start : start + batch_size]
        logits = decode(model, lens(chunk) if lens is not None else chunk)
        total += _kl_from_final(logits, logits[-1]) * chunk.shape[1]
    return total / flat.shape[1]


def kl_per_layer(
    model: HookedTransformer, stack: Float[Tensor, "layer_plus_1 *tokens d_model"], tuned: TunedLens, batch_size: int | None = None
) -> dict[str, Float[Tensor, "layer_plus_1"]]:
    """KL to the final distribution per layer for the logit lens and the tuned lens (the last entry is 0)."""
    return {"logit lens": kl_to_final(model, stack, batch_size=batch_size), "tuned lens": kl_to_final(model, stack, tuned, batch_size=batch_size)}


def train_tuned_lens(
    model: HookedTransformer,
    stack: Float[Tensor, "layer_plus_1 *tokens d_model"],
    *,
    steps: int = 300,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[TunedLens, list[float]]:
    """Fit a tuned lens on cached residuals (see `residual_stack`) by minimising KL(final || lens).

    Adam on random minibatches of tokens; the model stays frozen. Works under a global
    ``torch.set_grad_enabled(False)`` too (notebooks often turn gradients off). Returns the
    lens and the loss (summed over layers) at every step.
    """
    flat = _flatten(model, stack).detach()
    lens = TunedLens(model.cfg.n_layers, model.cfg.d_model)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        final_logits = decode(model, flat[-1])
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
                idx = torch.randint(0, flat.shape[1], (min(batch_size, flat.shape[1]),), generator=gen)
                logits = decode(model, lens(flat[:, idx])[:-1])
                loss = _kl_from_final(logits, final_logits[idx]).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return lens, losses


def lens_answer_stats(
    lens_logits: Float[Tensor, "layer batch pos d_vocab"], answers: Int[Tensor, "batch"], pos: int | Int[Tensor, "batch"] = -1
) -> tuple[Int[Tensor, "layer batch"], Float[Tensor, "layer batch"]]:
    """The answer's rank and probability at ``pos``, layer by layer."""
    at = torch.stack([at_pos(layer_logits, pos) for layer_logits in lens_logits])
    expanded = answers.expand(at.shape[:-1])
    return answer_rank(at, expanded), answer_prob(at, expanded)


def name_control(
    tokens: Int[Tensor, "batch pos"], io: Int[Tensor, " batch"], s: Int[Tensor, " batch"], names: Int[Tensor, " n_names"], seed: int
) -> Int[Tensor, "batch pos"]:
    """IOI prompts with both names replaced by two other names (a control for a lens readout).

    Every place of the indirect object ``io`` gets one new name and every place of the subject
    ``s`` another, drawn (seeded) from ``names`` without the prompt's own two; all other tokens,
    the last one included, stay. The lens then reads the same template and last token with
    neither of the clean answers in the context: what it still shows is the prior (bigram
    statistics), not information read from the prompt.
    """
    if tokens.ndim != 2 or io.shape != (tokens.shape[0],) or s.shape != io.shape:
        raise ValueError(f"need tokens [batch, pos] and io, s [batch], got {tuple(tokens.shape)}, {tuple(io.shape)} and {tuple(s.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    for row in range(tokens.shape[0]):
        others = names[(names != io[row]) & (names != s[row])]
        if len(others) < 2:
            raise ValueError("need at least two names besides the prompt's own two.")
        new_io, new_s = others[torch.randperm(len(others), generator=gen)[:2]]
        out[row][tokens[row] == io[row]] = new_io
        out[row][tokens[row] == s[row]] = new_s
    return out
