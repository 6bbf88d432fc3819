"""Checks of notebook 02 (induction heads).

Every check runs the learner's function on the notebook's example (when given) and on fresh
random inputs: random queries and keys, random causal attention patterns of a random repeated
length, idealised patterns mixed with noise, random weights; the design check runs the
learner's corruption in an edge-patching experiment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mi_course import induction
from mi_course.checks.core import CheckFailed, call_learner, check_choice, check_function, check_seeded, fresh_seed, passed

__all__ = [
    "KQV_OPTIONS",
    "check_attention_pattern",
    "check_corruption",
    "check_induction_score",
    "check_k_composed_qk",
    "check_kqv_prediction",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "02.1": ("mi_course.induction.attention_pattern",),
    "02.2": ("mi_course.induction.induction_score",),
    "02.3": ("mi_course.induction.k_composed_qk",),
    "02.5": ("mi_course.induction.corrupt_repeat",),  # resample_index is a tool the design may use
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


# ---------------------------------------------------------------- 02.1 attention pattern from q and k


def _scores(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    return torch.einsum("bqhd,bkhd->bhqk", q, k) / (q.shape[-1] ** 0.5 if scale is None else scale)


def _causal(n: int) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


_PATTERN_MISTAKES = {
    "your scores are not scaled: divide the dot products of queries and keys by the square root of d_head "
    "(the size of a query), as the model does, before the softmax.": lambda q, k: _scores(q, k, 1.0)
    .masked_fill(~_causal(q.shape[1]), float("-inf"))
    .softmax(-1),
    "you divided by d_head itself: the model divides the scores by its square root.": lambda q, k: _scores(q, k, q.shape[-1])
    .masked_fill(~_causal(q.shape[1]), float("-inf"))
    .softmax(-1),
    "your mask is on the wrong side: a query may attend to its own position and the keys before it (key <= query, "
    "the lower triangle of [query, key]), and must not see the keys after it.": lambda q, k: _scores(q, k)
    .masked_fill(~_causal(q.shape[1]).T, float("-inf"))
    .softmax(-1),
    "your softmax runs over the queries: each row (one query) must be a distribution over the keys, so the softmax "
    "runs over the last axis of [batch, head, query, key].": lambda q, k: _scores(q, k)
    .masked_fill(~_causal(q.shape[1]), float("-inf"))
    .softmax(-2),
    "you masked after the softmax: the future keys then took a share of the probability that is lost when you "
    "zero them, and the rows no longer sum to 1. Set the future scores to minus infinity before the softmax.": lambda q, k: _scores(q, k)
    .softmax(-1)
    .masked_fill(~_causal(q.shape[1]), 0.0),
    "your result is transposed: rows must be queries and columns keys, [batch, head, query, key].": lambda q, k: _scores(q, k)
    .masked_fill(~_causal(q.shape[1]), float("-inf"))
    .softmax(-1)
    .transpose(-1, -2),
}


def _qk_cases(example: Mapping | None, n: int = 3) -> list[dict]:
    """The example, then random queries and keys with batch, position, head and d_head all different."""
    cases = [dict(example)] if example is not None else []
    for _ in range(n):
        g = torch.Generator().manual_seed(fresh_seed())
        batch, heads = int(torch.randint(2, 4, (1,), generator=g)), int(torch.randint(4, 6, (1,), generator=g))
        n_pos, d_head = int(torch.randint(6, 10, (1,), generator=g)), int(torch.randint(10, 17, (1,), generator=g))
        q, k = (1.5 * torch.randn(batch, n_pos, heads, d_head, generator=g) for _ in range(2))
        cases.append(dict(q=q, k=k))
    return cases


def _pattern_shape_hint(got: tuple[int, ...], expected: tuple[int, ...], case: Mapping) -> str:
    return (
        f"expected one pattern per sequence and head, shape [batch, head, query, key] = {expected}, got {got}: queries and "
        "keys arrive as [batch, position, head, d_head], so the head axis moves in front of the positions."
    )


def check_attention_pattern(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``attention_pattern(q, k) -> [batch, head, q, k]``."""
    cases = _qk_cases(example)
    got = call_learner("02.1", learner, **cases[-1])
    if isinstance(got, Tensor) and got.is_floating_point() and bool(got.isnan().any()):
        raise CheckFailed(
            "02.1",
            "your pattern contains NaN: a row where every key is masked has nothing to take the softmax over. A query "
            "may attend to its own position, so keep the diagonal (key = query) unmasked.",
        )
    check_function(
        "02.1",
        learner,
        induction.attention_pattern,
        cases,
        mistakes=_PATTERN_MISTAKES,
        hint="expected, for each sequence and head, the softmax over keys of the scaled dot products of query and key, "
        "with the keys after the query excluded.",
        success="attention patterns match",
        shape_hint=_pattern_shape_hint,
    )


# ---------------------------------------------------------------- score helpers


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


# ---------------------------------------------------------------- 02.2 induction score


def check_induction_score(learner: Callable, example: Mapping | None = None) -> None:
    """Check ``induction_score(pattern, seq_len) -> [head]``."""
    cases = _pattern_cases(example, with_seq_len=True)
    check_function(
        "02.2",
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


# ---------------------------------------------------------------- 02.3 K-composed QK circuit


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
        "02.3",
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


# ---------------------------------------------------------------- 02.4 prediction: which input carries the edge

KQV_OPTIONS = {
    "Q": "the query input of the induction head",
    "K": "the key input of the induction head",
    "V": "the value input of the induction head",
}
_KQV_SEALED = (
    "255cd3d8439b45b4",
    "21e99e5bbb6a466678fa01a7a96295f3",
    "HNSiKvtVF1OnueBAZ72wMjC8QG7C0wR7v8MAXwbMSr+kBuen685nJ1dW6u9l4jmfDTBCQhar2L/7pZ35/RaxKXS9RXDkO+6WgrGb31uHoBHgAgAQy93wz6j3W+57ByP21d/OTvjMzDLvBxoO7j3V59en1PfWGr/c9M+rwgOy5wnbECzb4YiYsMYTV7GKKayF02N37jDz5kCm6TNID/i6tRCDuR/XLCvgW+FwZc3Z35bhgdBTBoembOLo6zNYRq0DWj1dmNwqjk6XSSWhwo+JO2ASPR/QWKyfzu8DnYqaEbo14l2fKRf/4vRslYL71pX+GlFJnlM4plI8bQn9TGwCcpI/lXNc4qjl040vP5pu+xqt6chmdbMFFg9UmViM5yO9wHUbIEiY+ndl+Uwymyx/TWA1jQqwlsmI46a9Fmu9Gl9M+4t4ls/IelfBhEjw9BNNrfP2q/WUFP5aFiSSb/r4MpyUhAzjy+8ZYNO5QW5eJ+uAtNCl+13ZvzWM+I/WqQru7mYdQqgsxUHjPKdTCw==",
)
_KQV_HINTS = {
    "Q": "the query sits at the current token, whose own embedding already says which token it is: what would the "
    "previous-token head add there that the query needs in order to find the earlier copy?",
    "K": "think about the key at the position right after the earlier copy: how does it know which token came before it?",
    "V": "once the head attends to the right position, what it copies is the token at that position, which that "
    "position's own embedding supplies: does it need to know the token before it?",
}


def check_kqv_prediction(prediction) -> str:
    """Grade the set of inputs (Q, K, V) whose edge patch is predicted to remove most of the behaviour."""
    return check_choice("02.4", prediction, KQV_OPTIONS, _KQV_SEALED, several=True, hints=_KQV_HINTS)


# ---------------------------------------------------------------- 02.5 design: the corruption for the edge patch


def _random_repeats(tokens: Tensor, seed: int) -> tuple[Tensor, int]:
    """A fresh repeated random batch ``[BOS, run, run]`` of another size, from the tokens of ``tokens``' runs."""
    g = torch.Generator().manual_seed(seed)
    vocab = tokens[:, 1:].unique().cpu()
    seq_len = int(torch.randint(8, min(15, len(vocab)) + 1, (1,), generator=g))
    batch = int(torch.randint(3, 7, (1,), generator=g))
    runs = torch.stack([vocab[torch.randperm(len(vocab), generator=g)[:seq_len]] for _ in range(batch)])
    bos = torch.full((batch, 1), int(tokens[0, 0]))
    return torch.cat([bos, runs, runs], dim=1), seq_len


def _corruption_problem(tokens: Tensor, corrupted: object, seq_len: int) -> str | None:
    """What makes a corrupted batch unfit for the edge patch, or None."""
    if not isinstance(corrupted, Tensor):
        return f"your function must return a tensor of token ids like `tokens`, not {type(corrupted).__name__}."
    if corrupted.shape != tokens.shape:
        return (
            f"the corrupted batch has shape {tuple(corrupted.shape)}, the clean one {tuple(tokens.shape)}: edge patching "
            "swaps activations position by position, so every corrupted sequence must have the clean one's length."
        )
    if corrupted.dtype.is_floating_point or corrupted.dtype == torch.bool:
        return "return integer token ids (the dtype of `tokens`), not floats or booleans."
    if not torch.equal(corrupted[:, 0], tokens[:, 0]):
        return "keep the first token (BOS) as it is: every input the model sees starts with it."
    if bool((corrupted[:, 1:] == tokens[0, 0]).any()):
        return (
            "your corrupted runs contain the BOS token (a placeholder?): the model never sees it there, so the patch "
            "would mix the information you remove with an input off its distribution. Draw the corrupted runs from "
            "the same kind of random tokens."
        )
    first = slice(1, seq_len)  # the tokens before the keys the induction head looks for (positions 2 ... seq_len)
    changed = (corrupted[:, first] != tokens[:, first]).float().mean().item()
    if changed < 0.7:
        return (
            "too few tokens of the first run change: the keys the induction head looks for sit in the first run (the "
            "token after each earlier copy), and what the previous-token head writes there is about the token before "
            "them. Unless those tokens change, patching that head's output changes nothing."
        )
    distinct = min(len(set(row[1 : seq_len + 1].tolist())) for row in corrupted)
    if distinct < seq_len // 2:
        return (
            "a corrupted run repeats the same few tokens: that is unlike any input of this experiment (random runs of "
            "distinct tokens). Keep the corrupted inputs realistic and change only the information, as resample ablation "
            "does (notebook 03)."
        )
    return None


def check_corruption(
    learner: Callable,
    model,
    tokens: Tensor,
    seq_len: int,
    senders: list[tuple[int, int]],
    receiver: tuple[int, int],
    baseline: float,
) -> None:
    """Check a corruption ``corrupt(tokens, seq_len, seed)`` for patching ``senders -> receiver.k``.

    On the notebook's batch and on fresh random batches, the corrupted batch must be a valid
    input of the same shape, be reproducible from its seed, and change the tokens whose
    information the previous-token head carries to the keys. On a model that shows in-context
    learning, patching the key edges with the learner's corruption must also remove a clear share of it.
    """
    cases = [(tokens, seq_len)] + [_random_repeats(tokens, fresh_seed()) for _ in range(2)]
    corrupted = None
    for i, (clean, n) in enumerate(cases):
        got = check_seeded("02.5", learner, clean, n, seed=fresh_seed() % 1000, unchanged=("0",))
        problem = _corruption_problem(clean, got, n)
        if problem is not None:
            where = "on the notebook's batch" if i == 0 else "on a fresh random batch"
            raise CheckFailed("02.5", f"{where}: {problem}")
        if i == 0:
            if int(got.min()) < 0 or int(got.max()) >= model.cfg.d_vocab:
                raise CheckFailed("02.5", f"your corrupted batch holds ids outside the vocabulary (0 to {model.cfg.d_vocab - 1}): return token ids.")
            corrupted = got.to(tokens.device)
    clean_loss = induction.repeat_loss(model, tokens, seq_len)
    if not clean_loss < 0.5 * baseline:
        print("This model shows no in-context learning on the repeat, so the corruption was checked for validity only.")
    else:
        kept = induction.input_patch_kept(model, tokens, corrupted, seq_len, senders, receiver, baseline)["k"]
        if not kept < 0.9:  # a valid corruption removes a clear share (the package's: about 0.3 kept; shuffling each run: about 0.8)
            raise CheckFailed(
                "02.5",
                f"with your corruption, patching the key edges keeps {kept:.2f} of the behaviour, nearly all of it: the "
                "corrupted run must change what the previous-token head writes at the keys of the first run.",
            )
    passed("02.5", "the corruption is a valid input of the same shape, reproducible from its seed, and removes the information the keys read.")
