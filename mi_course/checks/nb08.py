"""Checks of notebook 08 (probing and its baselines).

The split and the control task are random by design, so their checks test the properties that
make the design valid: no prompt on both sides of the split; one fixed label per word type,
drawn from the task's label distribution. The prediction of control-task accuracies is graded
against probes trained inside the check. INLP is checked by what makes a nullspace projection
one: symmetric, idempotent, at most one direction removed per round (two classes), and a fresh
probe at chance on the projected data, on data where one round is not enough.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_course import probing
from mi_course.checks.core import CheckFailed, _describe, _plain, call_learner, check_choice, check_seeded, fresh_seed, passed

__all__ = [
    "END_POSITION_OPTIONS",
    "check_control_prediction",
    "check_control_task",
    "check_end_position",
    "check_inlp",
    "check_patch_prediction",
    "check_split_by_prompt",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "08.1": ("mi_course.probing.train_test_split",),
    "08.2": ("mi_course.probing.control_labels",),
    "08.5": ("mi_course.probing.inlp",),
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


def _split_parts(out: Any, exercise: str) -> tuple[Tensor, Tensor]:
    plain = _plain(out)
    if not isinstance(plain, (tuple, list)) or len(plain) != 2:
        raise CheckFailed(exercise, f"return two index tensors, (train_idx, test_idx); your function returned {_describe(plain)}.")
    return _as_long(plain[0], exercise, "train_idx"), _as_long(plain[1], exercise, "test_idx")


def check_split_by_prompt(learner: Callable, prompt_ids: Int[Tensor, "n"]) -> None:
    """``split_by_prompt(prompt_ids, test_fraction, seed)``: whole prompts go to train or to test."""
    ex = "08.1"
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


# 08.2 ---------------------------------------------------------------------------------


def check_control_task(learner: Callable, word_types: Int[Tensor, "n"], labels: Int[Tensor, "n"]) -> None:
    """``control_task(word_types, labels, seed)``: one fixed label per word type, from the labels' distribution."""
    ex = "08.2"
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


# 08.3 ---------------------------------------------------------------------------------


def check_control_prediction(
    prediction: Any,
    x_by_layer: dict[str, Float[Tensor, "n d"]],
    control: Int[Tensor, "n"],
    train_idx: Int[Tensor, "n_train"],
    test_idx: Int[Tensor, "n_test"],
    model_name: str = "toy-lm",
    tolerance: float = 0.15,
) -> dict[str, float]:
    """Grade predicted control-task accuracies (one per residual in ``x_by_layer``) against probes trained here.

    The prediction is about toy-lm: on another model the measured values are printed and nothing is graded.
    """
    ex = "08.3"
    names = list(x_by_layer)
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed(ex, "no prediction yet: fill in the exercise cell above.", "no-answer")
    plain = _plain(prediction)
    if not isinstance(plain, dict) or set(plain) != set(names):
        raise CheckFailed(ex, f"give a dict with one accuracy per residual, keys {names}; got {_describe(plain)}.")
    try:
        guess = {k: float(plain[k]) for k in names}
    except (TypeError, ValueError):
        raise CheckFailed(ex, "each predicted accuracy should be a number between 0 and 1.") from None
    if not all(0.0 <= v <= 1.0 for v in guess.values()):
        raise CheckFailed(ex, "accuracies are fractions between 0 and 1 (0.5, not 50).")
    control = torch.as_tensor(control).long()
    n_classes = int(control.max()) + 1
    truth = {}
    for name, x in x_by_layer.items():
        probe = probing.train_probe(x[train_idx], control[train_idx], n_classes=n_classes)
        truth[name] = probing.accuracy(probe, x[test_idx], control[test_idx])
    if model_name != "toy-lm":
        print(f"The prediction was about toy-lm; on {model_name} the control probes reach "
              + ", ".join(f"{k} {v:.2f}" for k, v in truth.items()) + " (not graded).")
        return truth
    first, last = names[0], names[-1]
    if abs(truth[first] - truth[last]) > 0.1 and (guess[first] - guess[last]) * (truth[first] - truth[last]) <= 0:
        raise CheckFailed(
            ex,
            f"the order is the wrong way round: where does the word's identity, the only thing a control label depends on, stay easier to read, "
            f"in the {first} or in the {last}?",
        )
    for name in names:
        if abs(guess[name] - truth[name]) > tolerance:
            how = "high" if guess[name] > truth[name] else "low"
            raise CheckFailed(
                ex,
                f"your guess for the {name} is too {how} (more than {tolerance} away). A control label is a function of the word alone: "
                f"how many word types can a linear map in this many dimensions tell apart there, and how much does context blur them?",
            )
    passed(ex, "within " + f"{tolerance} of the measured control accuracies (" + ", ".join(f"{k} {v:.2f}" for k, v in truth.items()) + ").")
    return truth


# 08.4 ---------------------------------------------------------------------------------


def check_patch_prediction(
    prediction: Any, model, task, positions: dict[str, int], layer: int, model_name: str = "toy-lm", tolerance: float = 0.2
) -> dict[str, float]:
    """Grade predicted normalised metrics after noising the residual at each named position (patched here, from ``task``'s corrupted prompts).

    The prediction is about toy-lm: on another model the measured values are printed and nothing is graded.
    """
    from mi_course.patching import patch_resid_pre

    ex = "08.4"
    names = list(positions)
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed(ex, "no prediction yet: fill in the exercise cell above.", "no-answer")
    plain = _plain(prediction)
    if not isinstance(plain, dict) or set(plain) != set(names):
        raise CheckFailed(ex, f"give a dict with one normalised metric per position, keys {names}; got {_describe(plain)}.")
    try:
        guess = {k: float(plain[k]) for k in names}
    except (TypeError, ValueError):
        raise CheckFailed(ex, "each prediction should be a number: the normalised metric, 1 for the clean behaviour, 0 for the flipped one.") from None
    with torch.no_grad():
        by_pos = patch_resid_pre(model, task.clean_tokens, task.corrupted_tokens, task.metric, direction="noising", positions=list(positions.values()), progress=False)
    scale = task.clean_value - task.corrupted_value
    truth = {k: (by_pos[layer, p].item() - task.corrupted_value) / scale for k, p in positions.items()}
    if model_name != "toy-lm":
        print(f"The prediction was about toy-lm; on {model_name} the patches give " + ", ".join(f"{k} {v:.2f}" for k, v in truth.items()) + " (not graded).")
        return truth
    for name in names:
        if abs(guess[name] - truth[name]) > tolerance:
            how = "high" if guess[name] > truth[name] else "low"
            raise CheckFailed(
                ex,
                f"your guess for the {name} is too {how} (more than {tolerance} away). This patch replaces everything the residual holds at that place, "
                "in any direction: which position do the reflections of section 7 suggest the model reads the number from, and how many blocks after this layer could still read it from there?",
            )
    passed(ex, f"within {tolerance} of the measured patches (" + ", ".join(f"{k} {v:.2f}" for k, v in truth.items()) + ").")
    return truth


# 08.5 ---------------------------------------------------------------------------------


def _redundant_data(seed: int, n: int = 600, d: int = 16) -> tuple[Tensor, Tensor]:
    """Two classes whose means differ along several directions, in anisotropic noise: one round of INLP is not enough."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    noise = (torch.randn(n, d, generator=gen) * torch.logspace(-0.5, 0.5, d)) @ basis.T
    shift = (basis[:, :4] + 0.5 * torch.randn(d, 4, generator=gen)).sum(1)
    return noise + 0.6 * (2 * y[:, None] - 1).float() * shift, y


def _as_matrix(out: Any, d: int, exercise: str) -> Tensor:
    plain = _plain(out)
    if isinstance(plain, (tuple, list)) and len(plain) == 2 and not np.isscalar(plain[0]):
        raise CheckFailed(exercise, f"return the projection matrix alone (a [{d}, {d}] tensor), not a pair.")
    try:
        array = np.asarray(plain, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (d, d):
        got = f"shape {array.shape}" if array is not None else _describe(plain)
        raise CheckFailed(exercise, f"return the projection as a [d, d] matrix (here [{d}, {d}]), got {got}.")
    if not np.isfinite(array).all():
        raise CheckFailed(exercise, "your projection has NaN or infinite entries.")
    return torch.from_numpy(array).float()


def check_inlp(learner: Callable, x: Float[Tensor, "n d"], y: Int[Tensor, "n"]) -> None:
    """``inlp(x, y, n_iterations)``: the projection onto what is left after removing every probe direction found.

    On the notebook's example (3 rounds) the answer must be a projection removing 1 to 3 directions; on
    two fresh random inputs (10 rounds, data where the label is readable along several directions)
    a fresh linear probe on the projected data must also be at chance.
    """
    ex = "08.5"
    if not callable(learner):
        raise CheckFailed(ex, f"expected a function, got {type(learner).__name__}.")
    cases = [(torch.as_tensor(x).float().clone(), torch.as_tensor(y).long().clone(), 3, False)]
    cases += [(*_redundant_data(fresh_seed()), 10, True) for _ in range(2)]
    for i, (xs, ys, rounds, at_chance) in enumerate(cases):
        where = "on the notebook's example" if i == 0 else "on a fresh random input"
        d = xs.shape[1]
        P = _as_matrix(call_learner(ex, learner, xs, ys, rounds), d, ex)
        if (P - P.T).abs().max() > 1e-3:
            raise CheckFailed(ex, f"{where} your matrix is not symmetric, so it is not an orthogonal projection: remove directions with unit vectors that are orthogonal to each other (an orthonormal basis of everything removed so far).")
        if (P @ P - P).abs().max() > 1e-3:
            raise CheckFailed(ex, f"{where} projecting twice changes the result again (P P is not P): remove each direction with its unit vector, and make the removed directions orthonormal, so that a removed direction stays removed.")
        removed = d - float(torch.trace(P))
        if removed < 0.5:
            raise CheckFailed(ex, f"{where} your projection removes nothing: it should remove the directions the probes use.")
        if removed > rounds + 0.5:
            raise CheckFailed(
                ex,
                f"{where} your projection removes about {removed:.0f} of {d} dimensions after {rounds} rounds; with two classes each round removes one direction. "
                "Keep everything except the removed directions (the identity minus the projection onto them), not only the directions themselves.",
            )
        if at_chance:
            projected = xs @ P
            probe = probing.train_probe(projected, ys)
            acc = probing.accuracy(probe, projected, ys)
            majority = max(ys.float().mean().item(), 1 - ys.float().mean().item())
            if acc > majority + 0.08:
                hint = (
                    f"{where} a fresh linear probe still reads the label from your projected data ({acc:.0%} on the training data; chance is {majority:.0%}). "
                )
                if removed < 1.5:
                    hint += "You removed a single direction: retrain a probe on the projected data in every round and remove its direction too, keeping all the earlier ones removed."
                else:
                    hint += "Train each round's probe on the data projected so far (not on the original data), and keep every direction found so far removed."
                raise CheckFailed(ex, hint)
    passed(ex, "a symmetric, idempotent projection, one direction per round, and a fresh probe at chance afterwards (the example and 2 fresh random inputs).")


# 08.6 ---------------------------------------------------------------------------------

END_POSITION_OPTIONS = {
    "A": "the model decides agreement at the last position, along the probe's direction",
    "B": "the subject's number at the last position plays no part in agreement at all",
    "C": "the last position carries a minor part of the decision; most of it is taken later, by reading the subject position",
    "D": "the logistic probe found the wrong direction; the difference-of-means direction flips agreement at the last position",
}
_END_POSITION_ANSWER = ('05d6a9cee8b4618c', '8e46f54ac27035a19ec978f6f42afbf2', 's/QZuWpHre530aKpnGi+wSaMab9UAqPZQm6ZcahJsnbO9Nwi8zcgJvHytX83VkqYHY39Uaw5NbktbLC3y9SQ5R00MHfc0ptVdNtcB1GdXn5A3TiEarECLbOJw+dZLwRfkdnqcY5OsjqDWU22gqeJu/DLHj+b7Q75kpWthedRR9GnvgtmnM3nZCGU1KuLsHeNYkA1C3RIeL/K4RY7yOXe6XCT3Iuk8BnlCUZf2c/J4OGL+fsoSE/ZrK9X57A+TW56x38Fdn4Q46bjNzwKr+gDPhRU95V44L26F7NxqMq7EpmA6dv/DZUOClByUA4UQLh6UZX3rYj78qGmq8DNZq/EokC0mOJt2glfnqFJ2NcC4/ke9TA6tiHHaoEN/GAry7+cQtlXnelAtk+EPGchNeJF/HBY04DjbXa40Gp9TiJKJZhluyfUxbyH9XjUrQEE+201ftzY44ww4PIStBY+BKE0d4pm6v4Jhs4pBYoUouxVQbawlv0PCJxf8cYECv8OA09pqRdSBHzHAZalbmHVufdo2aNh8NhvwhxKk16sQOJVRNYtvgMOmEZzRaWY9V1MO6QbUXgDNCdPgt/Va97xNpdifOb7SJ4dwesmjw28/TokaHtGh73WFFdkOcvK0NYelW4oAmlqRU2df7vDud/VqZmJn3wJ9kzoyrFcbgZYKQlSyd/HiWJrYrRYXtIbcZTVqmPA20ENT1lQt7CJg6+JTuMs6XMhzRE5Y9eq33gVFUO5KoG6I7eJNxcPuw6cZLybtHwhktKQCh4p9Y8k9fNDo7Es9uR1GuJcAmTRlSl2wvdWhPo672u6xinGfMn19JNSrAZOly9mUHoxadOHxGk=')


def check_end_position(answer: Any) -> None:
    """Which reading of the last-position evidence (sections 7 and 8, toy-lm) the controls support."""
    check_choice(
        "08.6",
        answer,
        END_POSITION_OPTIONS,
        _END_POSITION_ANSWER,
        hints={
            "A": "a perfect probe says the number can be read there; look at what reflecting along its direction, and replacing the whole residual there, did to agreement.",
            "B": "look at the patch of the whole last-position residual after the later layers: does it keep all of the behaviour, and does the same-number control explain the gap?",
            "D": "compare the two probe directions' rows in the reflection table: did either one reverse agreement at the last position, beyond its random control?",
        },
    )
