"""Checks of notebook 06 (attribution patching).

Each check runs the learner's code on the notebook's example and on fresh random inputs:
random activations and gradients, random score lists (with ties), a random smooth function
for the integrated gradients, or a random faithfulness curve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mi_course.attribution import rank_correlation, top_k_overlap
from mi_course.checks.core import CheckFailed, check_function, check_value, fresh_seed

__all__ = [
    "check_atp_score",
    "check_circuit_size",
    "check_eap_edge_score",
    "check_ig_gradient",
    "check_spearman",
    "check_top_k_overlap",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "06.2": ("mi_course.attribution.rank_correlation",),
    "06.3": ("mi_course.attribution.top_k_overlap",),
}


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# 06.1 ---------------------------------------------------------------------------------


def _atp_score(clean_act: Tensor, corrupted_act: Tensor, grad: Tensor) -> Tensor:
    return ((corrupted_act - clean_act) * grad).sum(dim=(0, 2))


def check_atp_score(learner: Callable, clean_act: Tensor, corrupted_act: Tensor, grad: Tensor) -> None:
    """``atp_score(clean_act, corrupted_act, grad)``: the AtP estimate per position, ``[batch, pos, d_model]`` -> ``[pos]``."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(clean_act=clean_act, corrupted_act=corrupted_act, grad=grad)]
    for _ in range(2):
        batch, pos, d = (int(torch.randint(2, 6, (1,), generator=gen)) for _ in range(3))
        cases.append(dict(clean_act=_randn(gen, batch, pos, d), corrupted_act=_randn(gen, batch, pos, d), grad=_randn(gen, batch, pos, d)))

    def shape_hint(got: tuple[int, ...], expected: tuple[int, ...], case: Mapping) -> str | None:
        batch, pos, d_model = case["clean_act"].shape
        if got in ((batch, pos, d_model), (pos, d_model)):
            return "you forgot to sum over d_model: the estimate is a dot product of the activation difference with the gradient, one number per position."
        if got == ():
            return "you summed over positions too: keep one score per position (sum over the batch and d_model only)."
        if got == (batch, pos):
            return "you forgot to sum over the batch: the metric is a mean over prompts, and its gradient already carries the 1/batch, so sum over the batch and d_model."
        return None

    check_function(
        "06.1",
        learner,
        _atp_score,
        cases,
        mistakes={
            "you used clean − corrupted: the sign is flipped. Patching moves the activation from clean to corrupted, so the change is corrupted − clean.": lambda clean_act, corrupted_act, grad: -_atp_score(clean_act, corrupted_act, grad),
            "you averaged over the batch: the metric is already a mean over prompts (its gradient carries the 1/batch), so sum over the batch.": lambda clean_act, corrupted_act, grad: _atp_score(clean_act, corrupted_act, grad) / grad.shape[0],
            "you multiplied the corrupted activation by the gradient: use the difference corrupted − clean.": lambda clean_act, corrupted_act, grad: (corrupted_act * grad).sum(dim=(0, 2)),
        },
        hint="compute ((corrupted_act − clean_act) * grad), summed over the batch and d_model.",
        success="the first-order estimate per position",
        shape_hint=shape_hint,
    )


# 06.2 ---------------------------------------------------------------------------------


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ordinal_ranks(x: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64).argsort(stable=True).argsort().to(torch.float64)


def _spearman_cases(a: Tensor, b: Tensor) -> list[dict]:
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(a=a, b=b)]
    for n, sign in ((12, 1.0), (30, -1.0)):
        x = torch.randint(0, 5, (n,), generator=gen).to(torch.float64)  # many ties
        y = sign * x + torch.randint(-2, 3, (n,), generator=gen).to(torch.float64)
        cases.append(dict(a=x, b=y))
    for sign in (1.0, -1.0):  # no ties, skewed; correlated and anti-correlated, so that the sign matters
        x = torch.randn(20, generator=gen, dtype=torch.float64) ** 3
        cases.append(dict(a=x, b=sign * x + 0.5 * torch.randn(20, generator=gen, dtype=torch.float64)))
    return cases


def check_spearman(learner: Callable, a: Tensor, b: Tensor) -> None:
    """``spearman(a, b)``: Spearman rank correlation of two 1-D tensors, tied values sharing their mean rank."""
    check_function(
        "06.2",
        lambda a, b: learner(a, b),
        lambda a, b: rank_correlation(a, b),
        _spearman_cases(a, b),
        mistakes={
            "you computed the Pearson correlation of the values themselves: replace each value by its rank first.": lambda a, b: _pearson(a, b),
            "tied values must share the mean of their ranks (argsort of argsort gives tied values different ranks).": lambda a, b: _pearson(_ordinal_ranks(a), _ordinal_ranks(b)),
            "you returned the absolute value: a negative rank correlation (one ranking reversed) must stay negative.": lambda a, b: abs(rank_correlation(a, b)),
        },
        hint="rank each list (ties get the mean of their ranks), then take the Pearson correlation of the ranks.",
        success="rank correlation, ties included",
    )


# 06.3 ---------------------------------------------------------------------------------


def check_top_k_overlap(learner: Callable, a: Tensor, b: Tensor, k: int) -> None:
    """``top_k_overlap(a, b, k)``: the fraction of the k largest |a| that are among the k largest |b|."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(a=a, b=b, k=k)]
    for n, kk in ((16, 4), (40, 7)):
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        cases.append(dict(a=x, b=-x + 0.7 * torch.randn(n, generator=gen, dtype=torch.float64), k=kk))

    def signed(a, b, k):
        return len(set(torch.as_tensor(a).topk(k).indices.tolist()) & set(torch.as_tensor(b).topk(k).indices.tolist())) / k

    check_function(
        "06.3",
        lambda a, b, k: learner(a, b, k),
        lambda a, b, k: top_k_overlap(a, b, k),
        cases,
        mistakes={
            "you ranked by the signed score: a component that moves the metric strongly in either direction matters, so rank by |score|.": signed,
            "you returned the number of shared components: divide by k to get a fraction.": lambda a, b, k: top_k_overlap(a, b, k) * k,
        },
        hint="take the indices of the k largest |a| and of the k largest |b|, and return the size of their intersection divided by k.",
        success="top-k overlap",
    )


# 06.4 ---------------------------------------------------------------------------------


def _eap(sender_clean: Tensor, sender_corrupted: Tensor, sender_grad: Tensor, receiver_grad: Tensor) -> float:
    return float(((sender_corrupted - sender_clean) * receiver_grad).sum())


def check_eap_edge_score(learner: Callable, sender_clean: Tensor, sender_corrupted: Tensor, sender_grad: Tensor, receiver_grad: Tensor) -> None:
    """``eap_edge_score(sender_clean, sender_corrupted, sender_grad, receiver_grad)``: the EAP score of one edge."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(sender_clean=sender_clean, sender_corrupted=sender_corrupted, sender_grad=sender_grad, receiver_grad=receiver_grad)]
    for sign in (1.0, -1.0, 1.0, -1.0):  # scores of both signs, so that the sign matters
        shape = tuple(int(torch.randint(2, 6, (1,), generator=gen)) for _ in range(3))
        receiver = _randn(gen, *shape)
        clean, corrupted = _randn(gen, *shape), _randn(gen, *shape)
        if _eap(clean, corrupted, None, receiver) * sign < 0:
            clean, corrupted = corrupted, clean
        cases.append(dict(sender_clean=clean, sender_corrupted=corrupted, sender_grad=receiver + _randn(gen, *shape), receiver_grad=receiver))
    check_function(
        "06.4",
        lambda **case: learner(**case),
        _eap,
        cases,
        mistakes={
            "you used the gradient at the sender's output, not the receiver's input: that gives the sender's node score (summed over all its receivers), not this edge's.": lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: _eap(sender_clean, sender_corrupted, None, sender_grad),
            "you used clean − corrupted: the sign is flipped. The edge is patched from the sender's clean output to its corrupted one.": lambda **case: -_eap(**case),
            "you multiplied the sender's corrupted output by the gradient: use the difference corrupted − clean.": lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float((sender_corrupted * receiver_grad).sum()),
            "you took the absolute value: the sign says whether patching the edge raises or lowers the metric, keep it.": lambda **case: abs(_eap(**case)),
        },
        hint="sum (sender_corrupted − sender_clean) * receiver_grad over every dimension.",
        success="the EAP score of one edge",
    )


# 06.5 ---------------------------------------------------------------------------------


def _ig(grad_fn: Callable, clean: Tensor, corrupted: Tensor, steps: int) -> Tensor:
    return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(1, steps + 1)) / steps


def _smooth_grad_fn(gen: torch.Generator, d: int) -> Callable[[Tensor], Tensor]:
    """The gradient of f(x) = sum(tanh(x @ W)): a function whose gradient changes along the path."""
    w = _randn(gen, d, d)
    return lambda x: (1 - torch.tanh(x @ w) ** 2) @ w.T


def check_ig_gradient(learner: Callable, grad_fn: Callable, clean: Tensor, corrupted: Tensor, steps: int) -> None:
    """``ig_gradient(grad_fn, clean, corrupted, steps)``: grad_fn averaged over corrupted + k/steps (clean − corrupted), k = 1..steps."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(grad_fn=grad_fn, clean=clean, corrupted=corrupted, steps=steps)]
    for steps_ in (3, 7):
        d = 6
        cases.append(dict(grad_fn=_smooth_grad_fn(gen, d), clean=2 * _randn(gen, 4, d), corrupted=2 * _randn(gen, 4, d), steps=steps_))
    mean = lambda xs: sum(xs) / len(xs)
    check_function(
        "06.5",
        learner,
        _ig,
        cases,
        mistakes={
            "you averaged the activations instead of the gradients: take the gradient at each interpolated input, then average the gradients.": lambda grad_fn, clean, corrupted, steps: grad_fn(mean([corrupted + k / steps * (clean - corrupted) for k in range(1, steps + 1)])),
            "off by one in the interpolation points: use k = 1, ..., steps (the last point is the clean input itself, the corrupted input is not used).": lambda grad_fn, clean, corrupted, steps: mean([grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(steps)]),
            "off by one in the interpolation points: use exactly `steps` points, k = 1, ..., steps (you used steps + 1, from k = 0).": lambda grad_fn, clean, corrupted, steps: mean([grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(steps + 1)]),
            "your path runs the wrong way: the points are corrupted + k/steps (clean − corrupted), ending at the clean input.": lambda grad_fn, clean, corrupted, steps: _ig(grad_fn, corrupted, clean, steps),
        },
        hint="average grad_fn(corrupted + k / steps * (clean − corrupted)) over k = 1, ..., steps.",
        success="the integrated-gradients average",
    )


# 06.6 ---------------------------------------------------------------------------------


def _size_for(curve: Mapping[int, float], threshold: float) -> int | None:
    return min((n for n, f in curve.items() if f >= threshold), default=None)


def check_circuit_size(answer, curve: Mapping[int, float], threshold: float = 0.8) -> None:
    """The smallest circuit size in ``curve`` whose faithfulness reaches ``threshold``."""
    expected = _size_for(curve, threshold)
    below = [n for n, f in curve.items() if f < threshold and (expected is None or n < expected)]
    mistakes = {}
    if below:
        mistakes["that is the largest size that still falls short of the threshold: take the smallest size whose faithfulness is at least the threshold."] = max(below)
    if expected is not None:
        mistakes["that is a faithfulness, not a size: answer with the number of edges n."] = curve[expected]
    mistakes["that is the largest size of the curve: pick the smallest one that reaches the threshold."] = max(curve)
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, int) and answer == expected:
        check_value("06.6", answer, expected, success=f"{expected} edges reach {threshold:.0%} faithfulness")
        return
    check_value("06.6", answer, expected, mistakes=mistakes, hint=f"read the curve: the smallest n with faithfulness ≥ {threshold}.")
