"""Checks of notebook 02 (induction heads).

Every check runs the learner's function on the notebook's example (when given) and on fresh
random inputs: random causal attention patterns of a random repeated length, idealised
patterns mixed with noise, random activations and random weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mi_course import induction
from mi_course.checks.core import CheckFailed, check_function, fresh_seed, separating_case

__all__ = [
    "check_copying_score",
    "check_duplicate_token_score",
    "check_induction_score",
    "check_k_composed_qk",
    "check_previous_token_score",
    "check_resample_ablate",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "02.1": ("mi_course.induction.previous_token_score",),
    "02.2": ("mi_course.induction.duplicate_token_score",),
    "02.3": ("mi_course.induction.induction_score",),
    "02.4": ("mi_course.induction.resample_ablate",),
    "02.5": ("mi_course.induction.diagonal_argmax_fraction",),
    "02.6": ("mi_course.induction.k_composed_qk",),
}

HEAD_AXIS_HINT = (
    "you need one score per head: average over the batch (dim 0) and over the query positions, "
    "and keep the head axis (dim 1) of [batch, head, query, key]."
)


def _pattern_cases(example: Mapping | None, with_seq_len: bool, n: int = 3) -> list[dict]:
    """The example, then random causal patterns and noisy idealised ones of random sizes."""
    cases = [dict(example)] if example is not None else []
    for i in range(n):
        seed = fresh_seed()
        g = torch.Generator().manual_seed(seed)
        seq_len = int(torch.randint(3, 9, (1,), generator=g))
        batch = int(torch.randint(2, 4, (1,), generator=g))
        if i % 2 == 0:
            heads = int(torch.randint(5, 7, (1,), generator=g))  # never equal to batch
            pattern = induction.random_causal_patterns(batch, heads, 2 * seq_len + 1, seed)
        else:
            pattern = induction.synthetic_patterns(seq_len, batch, seed, noise=0.3)
        cases.append(dict(pattern=pattern, seq_len=seq_len) if with_seq_len else dict(pattern=pattern))
    return cases


def _head_axis_hint(got: tuple[int, ...], expected: tuple[int, ...], case: Mapping) -> str:
    """The hint for a score of the wrong shape: one score per head is expected."""
    return f"{HEAD_AXIS_HINT} (your result has shape {got}.)"


# ---------------------------------------------------------------- 02.1 previous-token score


def check_previous_token_score(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``previous_token_score(pattern) -> [head]``."""
    cases = _pattern_cases(example, with_seq_len=False)

    def diagonal(offset: int) -> Callable:
        return lambda pattern: pattern.diagonal(offset=offset, dim1=-2, dim2=-1).mean(dim=(0, -1))

    check_function(
        "02.1",
        learner,
        induction.previous_token_score,
        cases,
        mistakes={
            "you read the main diagonal, which is each token's attention to itself: the previous token is one "
            "step below it, key = query - 1 (`diagonal(offset=-1, dim1=-2, dim2=-1)`).": diagonal(0),
            "you read the diagonal above the main one (key = query + 1, or dim1 and dim2 swapped): causal "
            "attention is zero there. Queries are dim -2, keys dim -1; the previous token is offset -1.": diagonal(1),
            "you averaged over the whole query-key matrix (the zeros above the diagonal included): average only "
            "the entries [q, q - 1], one per query from position 1 on.": lambda pattern: pattern[..., 1:, :-1].mean(dim=(0, -2, -1)),
            "you left out query 1 (its previous token is BOS, column 0): average over every query from "
            "position 1 on.": lambda pattern: pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, -1)),
        },
        hint="expected, per head, the mean over the batch and over queries q >= 1 of pattern[b, head, q, q - 1].",
        success="previous-token scores match",
        shape_hint=_head_axis_hint,
    )


# ---------------------------------------------------------------- 02.2 duplicate-token score


def _offset_score(offset: Callable[[int], int], keep_last: bool = True) -> Callable:
    """A score from the diagonal ``offset(seq_len)``; only its last ``seq_len`` entries if ``keep_last``."""

    def score(pattern: Tensor, seq_len: int) -> Tensor:
        diag = pattern.diagonal(offset=offset(seq_len), dim1=-2, dim2=-1)
        return (diag[..., -seq_len:] if keep_last else diag).mean(dim=(0, -1))

    return score


def _whole_sequence_mean(offset: Callable[[int], int]) -> Callable:
    """The repeat's diagonal summed, divided by every query of the sequence (the first half as zeros)."""

    def score(pattern: Tensor, seq_len: int) -> Tensor:
        diag = pattern.diagonal(offset=offset(seq_len), dim1=-2, dim2=-1)[..., -seq_len:]
        return diag.sum(-1).mean(0) / pattern.shape[-2]

    return score


def check_duplicate_token_score(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``duplicate_token_score(pattern, seq_len) -> [head]``."""
    cases = _pattern_cases(example, with_seq_len=True)
    check_function(
        "02.2",
        learner,
        induction.duplicate_token_score,
        cases,
        mistakes={
            "off by one: you measured attention to the token *after* the earlier copy (that is the induction "
            "score). The earlier copy of the current token is exactly seq_len positions back: key = query - seq_len.": _offset_score(
                lambda n: 1 - n
            ),
            "off by one: you went seq_len + 1 positions back. With one BOS in front, the earlier copy of the "
            "token at query q is at key q - seq_len.": _offset_score(lambda n: -n - 1),
            "you included the BOS column: the diagonal at offset -seq_len starts with query seq_len attending to "
            "BOS (key 0), which is still the first half. Keep only its last seq_len entries (the repeat's queries).": _offset_score(
                lambda n: -n, keep_last=False
            ),
            "you divided by every query of the sequence: average only over the seq_len queries of the repeat, "
            "where an earlier copy exists (the first half has none).": _whole_sequence_mean(lambda n: -n),
        },
        hint="expected, per head, the mean over the batch and over the repeat's queries q = seq_len + 1 ... 2 seq_len "
        "of pattern[b, head, q, q - seq_len].",
        success="duplicate-token scores match",
        shape_hint=_head_axis_hint,
    )


# ---------------------------------------------------------------- 02.3 induction score


def check_induction_score(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``induction_score(pattern, seq_len) -> [head]``."""
    cases = _pattern_cases(example, with_seq_len=True)
    check_function(
        "02.3",
        learner,
        induction.induction_score,
        cases,
        mistakes={
            "off by one in the induction offset: you measured attention to the earlier copy of the current token "
            "(the duplicate-token score). An induction head attends to the token that came *after* that copy: "
            "key = query - seq_len + 1, the diagonal at offset 1 - seq_len.": _offset_score(lambda n: -n),
            "off by one in the induction offset: key = query - seq_len + 1, not query - seq_len + 2.": _offset_score(
                lambda n: 2 - n
            ),
            "you averaged over the whole diagonal, which starts in the first half (queries seq_len - 1 and "
            "seq_len, with nothing repeated yet). Don't forget to drop the first half: keep only the last "
            "seq_len entries, the repeat's queries.": _offset_score(lambda n: 1 - n, keep_last=False),
            "the offset must be negative (keys before the query): with a positive offset you read the upper "
            "triangle, where causal attention is zero.": _offset_score(lambda n: n - 1, keep_last=False),
            "you divided by every query of the sequence: average only over the seq_len queries of the repeat.": _whole_sequence_mean(
                lambda n: 1 - n
            ),
        },
        hint="expected, per head, the mean over the batch and over the repeat's queries q = seq_len + 1 ... 2 seq_len "
        "of pattern[b, head, q, q - seq_len + 1].",
        success="induction scores match",
        shape_hint=_head_axis_hint,
    )


# ---------------------------------------------------------------- 02.4 resample ablation


def _scatter(z, head, source):
    out = z.clone()
    out[source, :, head] = z[:, :, head]
    return out


def _every_head(z, head, source):
    return z[source].clone()


def _mean(z, head, source):
    out = z.clone()
    out[:, :, head] = z[:, :, head].mean(0, keepdim=True)
    return out


def _zero(z, head, source):
    out = z.clone()
    out[:, :, head] = 0.0
    return out


def _resample_cases(example: Mapping | None, n: int = 3) -> list[dict]:
    cases = [dict(example)] if example is not None else []
    for _ in range(n):
        g = torch.Generator().manual_seed(fresh_seed())
        batch, n_heads = int(torch.randint(4, 8, (1,), generator=g)), int(torch.randint(2, 5, (1,), generator=g))
        # a permutation without fixed points whose inverse differs from itself
        perm = torch.randperm(batch, generator=g)
        source = torch.empty(batch, dtype=torch.long)
        source[perm] = perm.roll(1)
        z = torch.randn(batch, 6, n_heads, 4, generator=g)
        cases.append(dict(z=z, head=int(torch.randint(0, n_heads, (1,), generator=g)), source=source))
    return cases


def check_resample_ablate(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``resample_ablate(z, head, source)``: a copy of ``z`` (``z`` itself must not change)."""
    check_function(
        "02.4",
        learner,
        induction.resample_ablate,
        _resample_cases(example),
        mistakes={
            "you scattered instead of gathering: sequence i must *receive* the head's output of sequence source[i], "
            "out[:, :, head] = z[source, :, head].": _scatter,
            "you resampled every head: only the head `head` (axis 2) takes another sequence's output.": _every_head,
            "that is mean ablation: resample ablation puts in the head's output on another real input "
            "(sequence source[i]), not an average.": _mean,
            "that is zero ablation, which the later layers never see in normal use: put in the head's output "
            "from sequence source[i].": _zero,
        },
        hint="expected z with z[:, :, head] replaced by z[source, :, head] and every other head unchanged.",
        unchanged=("z",),
        unchanged_hint="your function changed `z` in place: the exercise asks for a copy. Start with `out = z.clone()`, "
        "edit `out` (reading the values from `z`) and return it.",
        success="resample ablation matches",
    )


# ---------------------------------------------------------------- 02.5 copying score


def _random_ov(seed: int) -> dict:
    """A random non-symmetric square matrix with a diagonal boost (the answer strictly inside (0, 1)) and
    row offsets of both signs (so that a positive own logit, or one above the row's mean, is not the same as the largest)."""
    g = torch.Generator().manual_seed(seed)
    size = int(torch.randint(20, 60, (1,), generator=g))
    matrix = torch.randn(size, size, generator=g) + 1.5 * torch.eye(size) + 2 * torch.randn(size, 1, generator=g)
    return dict(full_ov=matrix)


def _copying_reference(full_ov: Tensor) -> float:
    return induction.diagonal_argmax_fraction(full_ov)


def _rows(m: Tensor) -> Tensor:
    return torch.arange(m.shape[0])


_COPYING_MISTAKES = {
    "you took the argmax down each column (dim 0): a row is one source token and its entries are the "
    "logits of every output token, so take the argmax along the last axis.": lambda full_ov: (full_ov.argmax(0) == _rows(full_ov)).float().mean().item(),
    "that is a count: return the fraction of tokens (divide by the vocabulary size).": lambda full_ov: float((full_ov.argmax(-1) == _rows(full_ov)).sum()),
    "a positive own logit is not enough: the token's own logit must be the largest of its row.": lambda full_ov: (full_ov.diagonal() > 0).float().mean().item(),
    "you compared the own logit with the row's mean: it must be the row's maximum.": lambda full_ov: (full_ov.diagonal() > full_ov.mean(-1)).float().mean().item(),
}


def _matrix_cases(example: Mapping | None, n: int = 3) -> list[dict]:
    """The example, then random matrices on which every typical mistake gives another answer."""
    cases = [dict(example)] if example is not None else []
    for _ in range(n):
        cases.append(separating_case(_random_ov, _copying_reference, _COPYING_MISTAKES.values(), fresh_seed()))
    return cases


def check_copying_score(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``copying_score(full_ov) -> float``: fraction of rows whose top entry is on the diagonal."""
    check_function(
        "02.5",
        learner,
        _copying_reference,
        _matrix_cases(example),
        mistakes=_COPYING_MISTAKES,
        hint="expected the fraction of rows i whose largest entry is full_ov[i, i].",
        success="copying score matches",
    )


# ---------------------------------------------------------------- 02.6 K-composed QK circuit


def _composed_cases(example: Mapping | None, n: int = 2) -> list[dict]:
    cases = [dict(example)] if example is not None else []
    for _ in range(n):
        g = torch.Generator().manual_seed(fresh_seed())
        d_vocab, d_model = int(torch.randint(7, 12, (1,), generator=g)), 6
        cases.append(
            dict(
                W_E=torch.randn(d_vocab, d_model, generator=g),
                W_QK=torch.randn(d_model, d_model, generator=g),
                W_OV=torch.randn(d_model, d_model, generator=g),
            )
        )
    return cases


def check_k_composed_qk(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``k_composed_qk(W_E, W_QK, W_OV) -> [d_vocab, d_vocab]``."""
    check_function(
        "02.6",
        learner,
        induction.k_composed_qk,
        _composed_cases(example),
        mistakes={
            "you left out the previous-token head: the key side does not read the key token's own embedding "
            "but what the earlier head wrote there, W_E @ W_OV.": lambda W_E, W_QK, W_OV: W_E @ W_QK @ W_E.T,
            "the previous-token head's output feeds the keys, not the queries: apply W_OV on the key side, "
            "W_E @ W_QK @ (W_E @ W_OV).T.": lambda W_E, W_QK, W_OV: (W_E @ W_OV) @ W_QK @ W_E.T,
            "rows must be query tokens and columns key tokens: you returned the transpose.": lambda W_E, W_QK, W_OV: (
                W_E @ W_QK @ (W_E @ W_OV).T
            ).T,
            "transpose W_OV's whole product: (W_E @ W_OV).T = W_OV.T @ W_E.T, not W_OV @ W_E.T.": lambda W_E, W_QK, W_OV: W_E
            @ W_QK
            @ W_OV
            @ W_E.T,
        },
        hint="expected W_E @ W_QK @ (W_E @ W_OV).T: queries read token embeddings, keys read the earlier head's output.",
        success="the K-composed QK circuit matches",
    )
