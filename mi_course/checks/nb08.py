"""Checks of notebook 08 (probing and its baselines).

Value checks (majority baseline, selectivity, reflection) compare the learner's function with
the reference on the notebook's example and on fresh random inputs. The split and the control
task are random by design, so their checks test the properties that matter instead: no prompt
on both sides of the split; one fixed label per word type, drawn from the task's label
distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_course import probing
from mi_course.checks.core import CheckFailed, _describe, _plain, call_learner, check_function, check_seeded, fresh_seed, passed, separating_case

__all__ = [
    "check_control_task",
    "check_majority_accuracy",
    "check_reflect",
    "check_selectivity",
    "check_split_by_prompt",
    "reference_reflect",
    "reference_selectivity",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "08.1": ("mi_course.probing.majority_accuracy",),
    "08.2": ("mi_course.probing.train_test_split",),
    "08.3": ("mi_course.probing.control_labels",),
    "08.4": ("mi_course.checks.nb08.reference_selectivity", "mi_course.probing.probe_selectivity"),
    "08.5": ("mi_course.checks.nb08.reference_reflect", "mi_course.probing.probe_intervention_hook"),
}


def _as_long(x: Any, exercise: str, what: str) -> Tensor:
    """The learner's answer as a flat tensor of integers (read as plain values, without running its code)."""
    plain = _plain(x)
    try:
        array = plain if isinstance(plain, np.ndarray) else np.asarray(plain)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iub" or array.dtype.kind == "b":
        kind = f"dtype {array.dtype}" if array is not None and array.dtype.kind in "fcb" else _describe(plain)
        raise CheckFailed(exercise, f"{what} should be a tensor (or array) of integers (indices or class labels), got {kind}.")
    return torch.from_numpy(array.astype(np.int64).reshape(-1))


# 08.1 ---------------------------------------------------------------------------------


def check_majority_accuracy(learner: Callable, y_train: Int[Tensor, "n_train"], y_test: Int[Tensor, "n_test"]) -> None:
    """``majority_class_accuracy(y_train, y_test)``: test accuracy of the most common training label."""
    gen = torch.Generator().manual_seed(fresh_seed())
    n_classes = int(torch.randint(3, 7, (1,), generator=gen))
    # train: class a is the majority; test: class b is, so every mistake below gives another number
    a, b = torch.randperm(n_classes, generator=gen)[:2].tolist()
    train = torch.randint(0, n_classes, (300,), generator=gen)
    train[:150] = a
    test = torch.randint(0, n_classes, (200,), generator=gen)
    test[:90] = b
    test[90:120] = a
    cases = [dict(y_train=y_train, y_test=y_test), dict(y_train=train[torch.randperm(300, generator=gen)], y_test=test)]

    def test_majority(y_train, y_test):
        return (y_test == torch.mode(y_test).values).float().mean().item()

    def train_share(y_train, y_test):
        return (y_train == torch.mode(y_train).values).float().mean().item()

    def chance(y_train, y_test):
        return 1 / len(torch.unique(torch.cat([y_train, y_test])))

    check_function(
        "08.1",
        learner,
        probing.majority_accuracy,
        cases,
        mistakes={
            "you took the most common label of the test set: a baseline may only use what a probe sees in training (y_train), then be scored on y_test.": test_majority,
            "you returned how common the majority label is in the training set; score the constant prediction on the test labels instead.": train_share,
            "1 / (number of classes) is chance for balanced classes only; the majority baseline always predicts the most common training label.": chance,
        },
        hint="find the most common label of y_train, then return the fraction of y_test equal to it (a float).",
        success="your majority baseline matches",
    )


# 08.2 ---------------------------------------------------------------------------------


def _split_parts(out: Any, exercise: str) -> tuple[Tensor, Tensor]:
    plain = _plain(out)
    if not isinstance(plain, (tuple, list)) or len(plain) != 2:
        raise CheckFailed(exercise, f"return two index tensors, (train_idx, test_idx); your function returned {_describe(plain)}.")
    return _as_long(plain[0], exercise, "train_idx"), _as_long(plain[1], exercise, "test_idx")


def check_split_by_prompt(learner: Callable, prompt_ids: Int[Tensor, "n"]) -> None:
    """``split_by_prompt(prompt_ids, test_fraction, seed)``: whole prompts go to train or to test."""
    ex = "08.2"
    if not callable(learner):
        raise CheckFailed(ex, f"expected a function, got {type(learner).__name__}.")
    gen = torch.Generator().manual_seed(fresh_seed())
    n_prompts = int(torch.randint(30, 60, (1,), generator=gen))
    lengths = torch.randint(3, 12, (n_prompts,), generator=gen)
    names = 1000 + torch.randperm(5 * n_prompts, generator=gen)[:n_prompts]  # arbitrary ids, not 0..n-1
    fresh = names.repeat_interleave(lengths)
    fresh = fresh[torch.randperm(len(fresh), generator=gen)]  # rows of a prompt need not be adjacent
    cases = [(torch.as_tensor(prompt_ids).clone(), 0.25, 0), (fresh, 0.3, 1), (fresh, 0.5, fresh_seed())]
    splits = []
    for ids, fraction, seed in cases:
        out = check_seeded(ex, learner, ids, fraction, seed)
        train, test = _split_parts(out, ex)
        n = len(ids)
        both = torch.cat([train, test])
        if len(both) != n or not torch.equal(both.sort().values, torch.arange(n)):
            raise CheckFailed(ex, "train_idx and test_idx together must hold every row index 0..n-1 exactly once (indices of rows, not prompt ids).")
        if set(ids[train].tolist()) & set(ids[test].tolist()):
            raise CheckFailed(ex, "the same sentence is in train and test: some prompt has tokens on both sides. Split the prompt ids, then send every row of a prompt to its prompt's side.")
        share = len(set(ids[test].tolist())) / len(set(ids.tolist()))
        if abs(share - fraction) > 0.1:
            raise CheckFailed(ex, f"about a fraction test_fraction={fraction} of the prompts should be in the test set; you put {share:.0%} of them there.")
        splits.append(test)
    _, other = _split_parts(call_learner(ex, learner, cases[0][0], 0.25, 1), ex)
    if torch.equal(other.sort().values, splits[0].sort().values):
        raise CheckFailed(ex, "your split is the same for seeds 0 and 1: pick the test prompts at random with the seed (torch.Generator().manual_seed(seed)).")
    passed(ex, "whole prompts on one side, every row once, seeded (the example and 2 fresh random inputs).")


# 08.3 ---------------------------------------------------------------------------------


def check_control_task(learner: Callable, word_types: Int[Tensor, "n"], labels: Int[Tensor, "n"]) -> None:
    """``control_task(word_types, labels, seed)``: one fixed label per word type, from the labels' distribution."""
    ex = "08.3"
    if not callable(learner):
        raise CheckFailed(ex, f"expected a function, got {type(learner).__name__}.")
    gen = torch.Generator().manual_seed(fresh_seed())
    n_types, n = 600, 6000
    types = torch.randint(0, n_types, (n,), generator=gen) * 7 + 3  # type ids need not be 0..T-1
    # skewed classes (60/25/10/5 %), and the real label depends on the type (as POS does)
    type_label = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), 7 * n_types + 3, replacement=True, generator=gen)
    fresh_labels = type_label[types]
    cases = [(torch.as_tensor(word_types).clone(), torch.as_tensor(labels).clone()), (types, fresh_labels)]
    for i, (t, y) in enumerate(cases):
        where = "on the notebook's example" if i == 0 else "on a fresh random input"
        out = check_seeded(ex, learner, t, y, 0)
        control = _as_long(out, ex, "the control labels")
        if control.shape != y.shape:
            raise CheckFailed(ex, f"{where} return one control label per row ({len(y)}), got {len(control)}.")
        if not set(control.unique().tolist()) <= set(y.unique().tolist()):
            raise CheckFailed(ex, f"{where} some control labels are not among the task's classes.")
        type_index = torch.unique(t, return_inverse=True)[1]
        first = torch.full((int(type_index.max()) + 1,), -1, dtype=torch.long)
        first[type_index.flip(0)] = control.flip(0)  # one label per type (any of its rows)
        if not torch.equal(first[type_index], control):
            raise CheckFailed(ex, "each word type needs one fixed label: you drew a new random label for every token, so the control task cannot be learned from the word at all.")
        if torch.equal(control, y):
            raise CheckFailed(ex, "these are the task's own labels: the control task gives every word type a random label.")
        if i == 1:
            expected = torch.bincount(y, minlength=4).float() / len(y)
            got = torch.bincount(first, minlength=4).float() / len(first)
            if (got - expected).abs().max() > 0.1:
                raise CheckFailed(
                    ex,
                    f"draw each type's label from the task's label distribution (e.g. the label of a random row), not uniformly over the classes: "
                    f"the task's class shares are {[round(v, 2) for v in expected.tolist()]}, your types' are {[round(v, 2) for v in got.tolist()]}.",
                )
            if torch.equal(_as_long(call_learner(ex, learner, t, y, 1), ex, "the control labels"), control):
                raise CheckFailed(ex, "your control labels are the same for seeds 0 and 1: draw them with a generator seeded by `seed`.")
    passed(ex, "one fixed label per word type, with the task's label distribution (the example and a fresh random input).")


# 08.4 ---------------------------------------------------------------------------------


def reference_selectivity(x, y, control, train_idx, test_idx) -> float:
    """Test accuracy of a linear probe on the task minus that of the same probe on the control task."""
    n_classes = int(max(y.max(), control.max())) + 1
    task = probing.train_probe(x[train_idx], y[train_idx], n_classes=n_classes)
    ctrl = probing.train_probe(x[train_idx], control[train_idx], n_classes=n_classes)
    return probing.accuracy(task, x[test_idx], y[test_idx]) - probing.accuracy(ctrl, x[test_idx], control[test_idx])


def _selectivity_variant(x, y, control, train_idx, test_idx, *, score_on="test", control_target="control", train_control=True, sign=1.0):
    n_classes = int(max(y.max(), control.max())) + 1
    rows = test_idx if score_on == "test" else train_idx
    task = probing.train_probe(x[train_idx], y[train_idx], n_classes=n_classes)
    ctrl = probing.train_probe(x[train_idx], (control if train_control else y)[train_idx], n_classes=n_classes)
    target = control if control_target == "control" else y
    return sign * (probing.accuracy(task, x[rows], y[rows]) - probing.accuracy(ctrl, x[rows], target[rows]))


def _random_probe_data(seed: int) -> dict:
    """Tokens of 80 word types in 12 dims; the label is a linear function of the type's vector."""
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(80, 12, generator=gen)
    types = torch.randint(0, 80, (800,), generator=gen)
    x = vectors[types] + 0.3 * torch.randn(800, 12, generator=gen)
    y = (vectors @ torch.randn(12, generator=gen) > 0).long()[types]
    control = probing.control_labels(types, y, seed=seed)
    train, test = probing.train_test_split(800, 0.3, seed=seed)
    return dict(x=x, y=y, control=control, train_idx=train, test_idx=test)


_SELECTIVITY_MISTAKES = {
    "you scored the probes on the rows they were trained on; selectivity compares accuracies on held-out rows (test_idx).": lambda **c: _selectivity_variant(**c, score_on="train"),
    "score the control probe against the control labels, not the task's labels.": lambda **c: _selectivity_variant(**c, control_target="task"),
    "you trained both probes on the task's labels: the second probe learns the control labels.": lambda **c: _selectivity_variant(**c, train_control=False),
    "selectivity is task accuracy minus control accuracy, not the other way round.": lambda **c: _selectivity_variant(**c, sign=-1.0),
}


def check_selectivity(learner: Callable, x, y, control, train_idx, test_idx) -> None:
    """``selectivity(x, y, control, train_idx, test_idx)``: task minus control test accuracy."""
    cases = [
        dict(x=x, y=y, control=control, train_idx=train_idx, test_idx=test_idx),
        # accuracies are coarse: every mistake at least 0.02 away from the answer (the check allows 0.01)
        separating_case(_random_probe_data, reference_selectivity, _SELECTIVITY_MISTAKES.values(), fresh_seed(), tol=0.02, tries=20),
    ]
    check_function(
        "08.4",
        learner,
        reference_selectivity,
        cases,
        mistakes=_SELECTIVITY_MISTAKES,
        hint="train one linear probe on y and one on control (train rows), score each on the test rows against its own labels, subtract.",
        success="your selectivity matches",
        atol=0.01,
        rtol=0.0,
    )


# 08.5 ---------------------------------------------------------------------------------


def reference_reflect(h: Float[Tensor, "n d"], direction: Float[Tensor, "d"], offset: float) -> Float[Tensor, "n d"]:
    """Mirror every row of h in the hyperplane direction . h + offset = 0."""
    return h - 2 * ((h @ direction + offset) / direction.dot(direction))[:, None] * direction


def check_reflect(learner: Callable, h: Float[Tensor, "n d"], direction: Float[Tensor, "d"], offset: float) -> None:
    """``reflect(h, direction, offset)``: the probe's logit difference changes sign, nothing else changes."""
    gen = torch.Generator().manual_seed(fresh_seed())
    w = torch.randn(16, generator=gen)
    w = w * (2.0 + 3 * torch.rand(1, generator=gen)) / w.norm()  # |w| between 2 and 5, never 1
    cases = [
        dict(h=h, direction=direction, offset=offset),
        dict(h=3 * torch.randn(20, 16, generator=gen), direction=w, offset=float(torch.randn(1, generator=gen)) + 1.0),
    ]

    def variant(h, direction, offset, *, factor=2.0, power=2, use_offset=True):
        margin = h @ direction + (offset if use_offset else 0.0)
        return h - factor * (margin / direction.norm() ** power)[:, None] * direction

    check_function(
        "08.5",
        learner,
        reference_reflect,
        cases,
        mistakes={
            "you flipped the whole vector (-h): only the component along the probe direction should change sign; everything orthogonal to it stays.": lambda h, direction, offset: -h,
            "you used the unnormalised weight: the distance to the boundary is (w·h + b) / |w|, along the unit vector w / |w|, so divide by |w|² in all.": lambda **c: variant(**c, power=0),
            "you divided by |w| once; the step is (w·h + b) / |w| along the unit vector w / |w|, that is (w·h + b) / |w|² times w.": lambda **c: variant(**c, power=1),
            "you reflected in the hyperplane w·h = 0 through the origin; the probe's decision boundary is w·h + b = 0, so include the offset.": lambda **c: variant(**c, use_offset=False),
            "you moved h onto the decision boundary (factor 1); a reflection goes as far again, to the other side (factor 2).": lambda **c: variant(**c, factor=1.0),
        },
        hint="h - 2 (h·w + b) / |w|² w for every row: the probe's logit difference w·h + b changes sign and keeps its size.",
        success="your reflection matches",
    )
