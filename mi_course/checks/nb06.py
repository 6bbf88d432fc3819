"""Checks of notebook 06 (attribution patching).

Each check runs the learner's code on the notebook's example and on fresh random inputs: a
fresh random model with random prompts and metric, random score lists, random activations and
gradients, or a random smooth function for the integrated gradients. The prediction is graded
against the experiment run inside the check; the interpretation against a sealed answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mi_course.attribution import attribution_patching, rank_correlation
from mi_course.checks.core import CheckFailed, call_learner, check_choice, check_function, check_seeded, fresh_seed, passed, separating_case
from mi_course.checks.nb01 import random_model

__all__ = [
    "FAILURE_OPTIONS",
    "check_atp_heads",
    "check_atp_prediction",
    "check_eap_edge_score",
    "check_failure_story",
    "check_ig_gradient",
    "check_validation_sample",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "06.1": ("mi_course.attribution.attribution_patching", "mi_course.attribution.frozen_head_patching"),
    "06.3": ("mi_course.attribution.validation_sample",),
}


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# 06.1 ---------------------------------------------------------------------------------


def _z_names(model) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]


def _atp_heads(model, clean, corrupted, metric) -> Tensor:
    return attribution_patching(model, clean, corrupted, metric, "z", ("layer", "head"), direction="noising")


def _atp_heads_leaves(model, clean, corrupted, metric) -> Tensor:
    """The mistake of making every head output a leaf: no gradient flows from a later head's output back to an earlier one."""
    names = _z_names(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=names)
    leaves = {}

    def leaf(z, hook):
        leaves[hook.name] = z.detach().requires_grad_(True)
        return leaves[hook.name]

    with torch.enable_grad():
        value = metric(model.run_with_hooks(clean, fwd_hooks=[(n, leaf) for n in names]))
        grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
    return torch.stack([((cache[n] - leaves[n].detach()) * (torch.zeros_like(cache[n]) if g is None else g)).sum(dim=(0, 1, 3)) for n, g in zip(names, grads)])


def _atp_heads_at_corrupted(model, clean, corrupted, metric) -> Tensor:
    return -attribution_patching(model, clean, corrupted, metric, "z", ("layer", "head"), direction="denoising")


_ATP_MISTAKES = {
    "the sign is flipped: noising moves each head's output from its clean value to its corrupted value, so the step is corrupted minus clean.": lambda **c: -_atp_heads(**c),
    "you averaged over the prompts: the metric is already a mean over prompts (its gradient carries the 1/batch), so sum the products over the batch.": lambda **c: _atp_heads(**c) / c["clean"].shape[0],
    "your gradient stops at the next head: turning each head's output into a new leaf tensor (detach, then requires_grad) cuts the paths from an "
    "earlier head through later heads. Keep the outputs in the graph (retain_grad, or torch.autograd.grad with respect to them), with gradients "
    "enabled from the embedding on.": lambda **c: _atp_heads_leaves(**c),
    "you took the gradient on the corrupted run: the noising estimate expands around the clean run, so the gradient (and the base activation) come from the clean prompts.": lambda **c: _atp_heads_at_corrupted(**c),
}


def _atp_case(seed: int) -> dict:
    model = random_model(seed)
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 1:4] = torch.randint(0, model.cfg.d_vocab, (3, 3), generator=gen)
    a, b = torch.randperm(model.cfg.d_vocab, generator=gen)[:2].tolist()
    return dict(model=model, clean=clean, corrupted=corrupted, metric=lambda logits: (logits[:, -1, a] - logits[:, -1, b]).mean())


def check_atp_heads(learner: Callable, model, clean: Tensor, corrupted: Tensor, metric: Callable) -> None:
    """``atp_heads(model, clean, corrupted, metric)``: the AtP estimate of noising each head's output, ``[n_layers, n_heads]``."""
    cases = [dict(model=model, clean=clean, corrupted=corrupted, metric=metric)]
    cases.append(separating_case(_atp_case, _atp_heads, _ATP_MISTAKES.values(), fresh_seed(), tol=1e-3))

    def shape_hint(got, expected, case):
        if len(got) == 3 and got[0] == expected[0] and got[-1] == expected[1]:
            return "you kept a score per position: the head's output is patched at every position at once, so sum over positions too."
        if len(got) == 4:
            return "you kept the batch and positions: sum the products over the prompts, the positions and d_head, one number per head."
        return None

    check_function(
        "06.1",
        lambda **case: learner(**case),
        _atp_heads,
        cases,
        mistakes=_ATP_MISTAKES,
        hint="per head: (corrupted output minus clean output) times the gradient of the metric at the clean output, summed over prompts, positions and d_head.",
        success="your AtP estimate matches",
        atol=1e-3,
        rtol=1e-3,
        shape_hint=shape_hint,
    )


# 06.2 ---------------------------------------------------------------------------------


def relative_error_by_layer(estimate: Tensor, exact: Tensor) -> Tensor:
    """Per layer: sum over heads of |estimate - exact| over the sum of |exact|."""
    return (estimate - exact).abs().sum(-1) / exact.abs().sum(-1).clamp_min(1e-9)


def check_atp_prediction(prediction, model, clean: Tensor, corrupted: Tensor, metric: Callable, exact_noising: Tensor, exact_denoising: Tensor, *, graded: bool = True) -> None:
    """A prediction ``{"better direction": "noising" | "denoising", "worst layer": int}``, graded against the experiment."""
    exercise = "06.2"
    atp = {d: attribution_patching(model, clean, corrupted, metric, "z", ("layer", "head"), direction=d) for d in ("noising", "denoising")}
    rho = {"noising": rank_correlation(atp["noising"], exact_noising), "denoising": rank_correlation(atp["denoising"], exact_denoising)}
    better = max(rho, key=rho.get)
    worst = int(relative_error_by_layer(atp["noising"], exact_noising).argmax())
    if not graded:
        print(f"Exercise {exercise} is a prediction about toy-lm, not graded on this model; here the better direction is {better} "
              f"and the worst noising layer is {worst}.")
        return
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed(exercise, "no prediction yet: fill in the exercise cell above.")
    if not isinstance(prediction, dict) or set(prediction) != {"better direction", "worst layer"}:
        raise CheckFailed(exercise, 'give a dict with the keys "better direction" and "worst layer".')
    direction, layer = prediction["better direction"], prediction["worst layer"]
    if direction not in ("noising", "denoising"):
        raise CheckFailed(exercise, f'"better direction" is "noising" or "denoising", not {direction!r}.')
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.cfg.n_layers:
        raise CheckFailed(exercise, f'"worst layer" is a layer number from 0 to {model.cfg.n_layers - 1}, not {layer!r}.')
    wrong = []
    if direction != better:
        wrong.append("the direction: think about where each expansion is taken and how far each step moves the metric")
    if layer != worst:
        wrong.append("the layer: a step taken early passes through more nonlinearities on its way to the logits")
    if wrong:
        raise CheckFailed(exercise, "not quite: " + "; ".join(wrong) + ". Run the next cells to see.")
    passed(exercise, f"the {better} estimate ranks the heads better (Spearman {rho[better]:.2f} against {min(rho.values()):.2f}), "
           f"and layer {worst}'s heads have the largest relative noising error.")


# 06.3 ---------------------------------------------------------------------------------


def _as_indices(exercise: str, got, n: int) -> list[int]:
    try:
        values = got.tolist() if hasattr(got, "tolist") else list(got)
    except Exception:
        raise CheckFailed(exercise, f"return a list of component indices, not {type(got).__name__}.") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise CheckFailed(exercise, "return whole-number indices into the flattened scores (one per component to patch exactly).")
    if any(not 0 <= v < n for v in values):
        raise CheckFailed(exercise, f"every index must lie between 0 and {n - 1} (the flattened scores).")
    return values


def check_validation_sample(learner: Callable, scores: Tensor, budget: int) -> None:
    """``validation_sample(scores, budget, seed)``: which components to check with exact patching."""
    exercise = "06.3"
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(scores=torch.as_tensor(scores).flatten(), budget=budget)]
    for n, b in ((60, 10), (37, 9)):
        cases.append(dict(scores=_randn(gen, n) ** 3, budget=b))
    for case in cases:
        s, b = case["scores"], case["budget"]
        order = s.abs().argsort(descending=True, stable=True).tolist()
        outside, draws = [], set()
        for draw in range(8):
            if draw == 0:
                got = check_seeded(exercise, learner, s, b, fresh_seed())
            else:
                got = call_learner(exercise, learner, s, b, fresh_seed())
            got = _as_indices(exercise, got, s.numel())
            if len(got) != b or len(set(got)) != b:
                raise CheckFailed(exercise, f"return exactly {b} different components: the budget is the number of exact patching runs.")
            if order[0] not in got:
                raise CheckFailed(exercise, "your sample leaves out the component AtP ranks first: the components a circuit would keep are the first to check.")
            low = frozenset(i for i in got if i not in order[:b])
            outside.append(len(low))
            draws.add(low)
        if sum(outside) / len(outside) < b / 4:
            raise CheckFailed(exercise, "your sample is (almost) all from the top of the AtP ranking: a component that AtP calls unimportant "
                              "but that matters (a false negative) would never be checked. Spend part of the budget on the others.")
        if len(draws) < 3:
            raise CheckFailed(exercise, "the components outside the top are the same whatever the seed: draw them at random (with a generator "
                              "seeded by seed), so that the sample says something about all the components AtP ranks low, not a fixed few.")
    passed(exercise, "the top of the ranking and a seeded random draw from the rest, within the budget")


# 06.5 ---------------------------------------------------------------------------------


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
        "06.5",
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


# 06.6 ---------------------------------------------------------------------------------


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
        "06.6",
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


# 06.4 ---------------------------------------------------------------------------------

FAILURE_OPTIONS = {
    "A": "Saturated attention in the later layers: freezing the attention patterns removes most of layer 0's error.",
    "B": "The layer norms' scales: freezing them removes most of layer 0's error; attention adds a smaller part.",
    "C": "The MLPs' GELUs: freezing the attention patterns and the layer-norm scales together leaves most of the error.",
    "D": "A wrong gradient: the estimate and the truth disagree even with every nonlinearity frozen.",
}
_FAILURE_SEALED = ('a8acb33b33b5f692', '1ff219b1d0886b95c945325f3d8354a2', 'p6jWyMWeiMVInA8mK2yKmjlUHzLMm+8L+/xyT7UbkEepKgli3GxXNJx/fsrmyYssxb8vDEJRqPKPFzEHf7ObP5w3fPKUixr5c8QoLrrRYCc7L8zFsd77dMTZbkZCfqdPhIOp31CuE6Nh6oWHyKfXpsJ6a7pREVhlhwVsRQ92Z/o5UapZpheC7/Og0OYipGRpWH6mNFbiS9JYnv+cHTibrZar5IQoj+LzPez94ez4uWY1RiD+2lLR2Q7cju2+mSJoBFCPZiAo3sh4A81QDgCCEAXOzDKImVon2UvFno79hQ2pUrufhCZ3X4AgVx+Y3PY4PXs5kr2l8IaSEWJS4qSOT0JFny+z3c7EisO00otITrgLjM2W4aqiYO+smi+2Q9BPdFsttVCPWfAspYZi7kmBNSgI7urdjMD0zw4v/JvIRaxUaexNRZtS/20f3IF27l2S9ZRtoX3H3rc1yBHwh4Aj5Bbf9u2kbL32+einc/xusYNStfPFgISr+sJrHjbhUa+/YZhQUn0BVJzEGzlgl2o/0MfvlT5aqXG8+CDhz2c5l1kRY2szLglgJRmh67KNm9hCHbmyr25y6o0yqHQ=')


def check_failure_story(answer) -> str:
    """Which nonlinearity bends toy-lm's noising curve, among ``FAILURE_OPTIONS``."""
    return check_choice(
        "06.4",
        answer,
        FAILURE_OPTIONS,
        _FAILURE_SEALED,
        hints={
            "A": "compare the row with the attention frozen with the unfrozen one: how much of layer 0's relative error is gone?",
            "C": "look at the row with both frozen: how much of layer 0's error is left, compared with the unfrozen row?",
            "D": "the gradient is exact (the package's tests compare it with finite differences), and the table's rows differ: which row has the smallest error?",
        },
    )
