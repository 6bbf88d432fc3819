"""``handwired-induction``: a 2-layer attention-only transformer whose weights are set by hand.

No training: every weight below is written down on purpose, so we know exactly what each
head does and can check interpretability methods against the truth.

Vocabulary: ``<bos>`` (id 0) and the 26 letters ``A`` ... ``Z`` (ids 1-26), written with
spaces between them: ``model.to_tokens("A B C")``. Up to 64 positions.

The residual stream (d_model = 172) is cut into five subspaces, each one-hot:

    TOK      27 dims  which token is here            (written by the token embedding)
    POS      64 dims  which position this is         (written by the positional embedding)
    PREV     27 dims  which token was one step back  (written by L0H0)
    OUT      27 dims  which token to predict         (written by L1H0, read by the unembedding)
    SCRATCH  27 dims  tokens seen so far             (written by L0H1; nothing useful reads it)

Layer 0
- **L0H0, previous-token head.** Query and key read POS only: the query at position i
  looks for position i-1, so the head attends from i to i-1. Its value reads TOK and its
  output writes that token into PREV. After layer 0, position i knows the token at i-1.
- L0H1, decoy: attends evenly to all earlier positions and writes the average of their
  tokens into SCRATCH.

Layer 1
- **L1H0, induction head.** Its query reads TOK (the current token, say ``B``); its key reads
  PREV, the output of L0H0 (K-composition): the key at position j says which token came just
  before j. So the head attends to the position right after an earlier ``B``. Its value reads
  TOK there (the token that followed ``B`` last time) and its output writes it into OUT,
  which the unembedding turns into a logit of 10 for that token and 0 for the others.
- L1H1, decoy: an attention sink, it attends to ``<bos>`` and copies SCRATCH into SCRATCH.

On a sequence of distinct random letters followed by its repeat, the model predicts every
repeated token (except the first one) with a loss of about 0.001 nats. In the first half it
has nothing to copy and spreads its guess over the tokens seen so far.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.circuits import Circuit, Edge

__all__ = ["LETTERS", "backup_truth", "build_backup", "build_handwired", "correct_logit", "ground_truth", "letter_model", "repeated_letters", "unrelated_letters"]

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
D_VOCAB = 1 + len(LETTERS)  # <bos> + letters
N_CTX = 64
D_HEAD = 64  # the previous-token head needs one query/key dimension per position
ATTN_SCORE = 20.0  # attention score of the wanted key; every other key scores 0
LOGIT = 10.0  # logit of the copied token; every other token gets 0

TOK = slice(0, D_VOCAB)
POS = slice(TOK.stop, TOK.stop + N_CTX)
PREV = slice(POS.stop, POS.stop + D_VOCAB)
OUT = slice(PREV.stop, PREV.stop + D_VOCAB)
SCRATCH = slice(OUT.stop, OUT.stop + D_VOCAB)
D_MODEL = SCRATCH.stop


def _one_hot_map(n: int, scale: float = 1.0) -> torch.Tensor:
    """An n x n identity: reads a one-hot subspace and writes the same one-hot elsewhere."""
    return scale * torch.eye(n)


def letter_model(name: str, n_layers: int, n_heads: int, d_model: int, d_head: int, n_ctx: int) -> HookedTransformer:
    """An empty attention-only model over ``<bos>`` and the letters, without layer norm (so that
    hand-set weights mean exactly what they say), with the letter tokenizer."""
    from mi_course.models import word_level_tokenizer

    cfg = HookedTransformerConfig(
        model_name=name,
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        n_ctx=n_ctx,
        d_vocab=D_VOCAB,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        default_prepend_bos=True,
    )
    return HookedTransformer(cfg, tokenizer=word_level_tokenizer(LETTERS, bos_token="<bos>"))


def build_handwired() -> HookedTransformer:
    """The hand-wired induction model (eval mode, with its letter tokenizer)."""
    model = letter_model("handwired-induction", 2, 2, D_MODEL, D_HEAD, N_CTX)
    # Queries are multiplied by sqrt(d_head) to undo the attention scaling: scores are exactly
    # ATTN_SCORE where we want attention and 0 elsewhere.
    q_scale = ATTN_SCORE * D_HEAD**0.5
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, TOK] = torch.eye(D_VOCAB)
        model.pos_embed.W_pos[:, POS] = torch.eye(N_CTX)

        attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
        # L0H0, previous-token head: query at position i is position i-1's one-hot (none at 0).
        attn0.W_Q[0, POS.start + 1 : POS.stop, : N_CTX - 1] = _one_hot_map(N_CTX - 1, q_scale)
        attn0.W_K[0, POS, :N_CTX] = _one_hot_map(N_CTX)
        attn0.W_V[0, TOK, :D_VOCAB] = _one_hot_map(D_VOCAB)
        attn0.W_O[0, :D_VOCAB, PREV] = _one_hot_map(D_VOCAB)
        # L0H1, decoy: zero query and key, so equal attention to all earlier positions.
        attn0.W_V[1, TOK, :D_VOCAB] = _one_hot_map(D_VOCAB)
        attn0.W_O[1, :D_VOCAB, SCRATCH] = _one_hot_map(D_VOCAB)

        # L1H0, induction head: query = current token, key = previous token (from L0H0).
        attn1.W_Q[0, TOK, :D_VOCAB] = _one_hot_map(D_VOCAB, q_scale)
        attn1.W_K[0, PREV, :D_VOCAB] = _one_hot_map(D_VOCAB)
        attn1.W_V[0, TOK, :D_VOCAB] = _one_hot_map(D_VOCAB)
        attn1.W_O[0, :D_VOCAB, OUT] = _one_hot_map(D_VOCAB)
        # L1H1, decoy attention sink: every query (each position's one-hot) looks for <bos>.
        attn1.W_Q[1, POS, 0] = q_scale
        attn1.W_K[1, TOK.start + 0, 0] = 1.0
        attn1.W_V[1, SCRATCH, :D_VOCAB] = _one_hot_map(D_VOCAB)
        attn1.W_O[1, :D_VOCAB, SCRATCH] = _one_hot_map(D_VOCAB)

        model.unembed.W_U[OUT, :] = _one_hot_map(D_VOCAB, LOGIT)
    return model.eval()


def ground_truth() -> Circuit:
    """The exact circuit of the induction behaviour, for the induction task's corruption.

    Valid when clean and corrupted prompts are both a random letter sequence followed by its
    repeat (different letters, same length), so that they differ in tokens, not in positions:
    for example the clean prompts of ``make_task("induction", model, seed=0)`` against those of
    ``seed=1``. (The induction task's own corruption changes only the first half, so the
    current token, and with it embed -> L1H0.q, is the same in both runs and patching cannot
    see that edge.)
    """
    edges = [
        Edge("embed", "L0H0.v"),  # the previous-token head moves each token one position on
        Edge("L0H0", "L1H0.k"),  # K-composition: the key says which token came before
        Edge("embed", "L1H0.q"),  # the query is the current token
        Edge("embed", "L1H0.v"),  # the value is the token that followed it last time
        Edge("L1H0", "logits"),  # the induction head's output is the prediction
    ]
    # Not included: embed -> L0H0.q and embed -> L0H0.k. They carry only positions (W_Q and
    # W_K of L0H0 read POS alone), which are the same in clean and corrupted prompts, so
    # patching them changes nothing: for this task they are fixed context, like a bias.
    # Every other edge is exactly zero in effect: its sender writes a subspace that its
    # receiver does not read (e.g. L0H1 and L1H1 only touch SCRATCH).
    return Circuit.from_edges(edges)


# --- handwired-backup -------------------------------------------------------------------

BACKUP_COPY = 0.6  # L1H0 writes the copied token with logit 6 (0.6 x LOGIT)
BACKUP_SUPPRESS = 0.3  # L1H1 writes it with logit -3: the correct letter's clean logit is 3


def build_backup() -> HookedTransformer:
    """``handwired-backup``: handwired-induction with a backup head and a negative head.

    - L0H0 and L0H1 are two identical previous-token heads (L0H1 replaces the decoy): each
      writes the previous token into PREV, so either alone is enough for the induction head's
      key; knocking one out changes almost nothing, knocking both out breaks induction.
    - L1H0 is the induction head, writing the copied token with logit 6.
    - L1H1 (replacing the attention sink) is a *negative* induction head: it attends exactly
      like L1H0 but writes the copied token with logit -3, so the correct letter's logit is
      6 - 3 = 3 on the clean prompts. Removing it raises the metric.

    Everything else is as in `build_handwired` (SCRATCH is unused).
    """
    model = build_handwired()
    model.cfg.model_name = "handwired-backup"
    with torch.no_grad():
        for attn in (model.blocks[0].attn, model.blocks[1].attn):
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                getattr(attn, name)[1] = getattr(attn, name)[0]  # head 1 := a copy of head 0
        model.blocks[1].attn.W_O[0] *= BACKUP_COPY
        model.blocks[1].attn.W_O[1] *= -BACKUP_SUPPRESS
    return model.eval()


def repeated_letters(n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` prompts: ``<bos>``, ``length`` distinct random letters, then the same letters again."""
    if not 1 <= length <= len(LETTERS):
        raise ValueError(f"length must be between 1 and {len(LETTERS)}, got {length}.")
    gen = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(len(LETTERS), generator=gen)[:length] + 1 for _ in range(n)])
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), first, first], dim=1)


def unrelated_letters(clean_tokens: torch.Tensor, seed: int) -> torch.Tensor:
    """A corruption of repeated-letter prompts that carries no letter information: each prompt is
    ``<bos>`` and distinct random letters that do not occur in its clean prompt, with no repeat.
    So a corrupted query or key never matches anything, wherever it is patched in."""
    n, pos = clean_tokens.shape
    if 3 * (pos - 1) // 2 > len(LETTERS):
        raise ValueError(f"prompts of {pos} tokens are too long: at most {2 * (len(LETTERS) // 3) + 1} (26 letters for the clean half and the corruption).")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for prompt in clean_tokens:
        allowed = torch.arange(1, D_VOCAB)
        allowed = allowed[~torch.isin(allowed, prompt)]
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), allowed[torch.randperm(len(allowed), generator=gen)[: pos - 1]]]))
    return torch.stack(rows)


def correct_logit(clean_tokens: torch.Tensor):
    """The metric: the mean logit of the correct next letter over the repeat of `clean_tokens`
    (the positions an induction head can predict). Linear in every head's output."""
    length = (clean_tokens.shape[1] - 1) // 2
    targets = clean_tokens[:, length + 2 :]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, length + 1 : -1].gather(-1, targets[..., None]).mean()

    return metric


def backup_truth() -> Circuit:
    """Every edge of handwired-backup that carries the letters (against `unrelated_letters`): both previous-token heads into both layer-1 keys, and the
    query, value and output of the induction head and of the negative head."""
    edges = {Edge("embed", f"L0H{h}.v") for h in (0, 1)}
    for head in ("L1H0", "L1H1"):
        edges |= {Edge("L0H0", f"{head}.k"), Edge("L0H1", f"{head}.k"), Edge("embed", f"{head}.q"), Edge("embed", f"{head}.v"), Edge(head, "logits")}
    return Circuit.from_edges(edges)
