"""The check machinery shared by every exercise."""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from mi_course.checks.core import CheckFailed, EnvironmentChanged, check_function, check_value, close, guard_hook

# Draws of fresh random inputs per wrong answer in the pass-rate tests of the cheap checks
# (MI_COURSE_DRAWS=30 for a quick look while editing a check).
DRAWS = int(os.environ.get("MI_COURSE_DRAWS", "300"))


def passes_in_draws(check, learner, *args, draws: int | None = None, **kwargs) -> tuple[int, Counter]:
    """Run ``check(learner, *args)`` on ``draws`` different, reproducible sets of fresh random inputs
    (the check module's ``fresh_seed`` replaced by a seeded stream): how often it passed, and the hints it gave."""
    draws = draws or DRAWS
    module = sys.modules[check.__module__]
    real = module.fresh_seed
    passes, hints = 0, Counter()
    try:
        for draw in range(draws):
            stream = random.Random(draw)
            module.fresh_seed = lambda: stream.getrandbits(31)
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    check(learner, *args, **kwargs)
                    passes += 1
                except CheckFailed as err:
                    hints[err.hint] += 1
    finally:
        module.fresh_seed = real
    return passes, hints


def assert_never_passes(check, learner, *args, hint: str | None = None, draws: int | None = None, **kwargs) -> None:
    """A wrong answer passes in none of the draws, and (if ``hint`` is given) always earns that hint."""
    passes, hints = passes_in_draws(check, learner, *args, draws=draws, **kwargs)
    assert passes == 0, f"passed {passes} of {draws or DRAWS} draws"
    if hint is not None:
        off = {h: n for h, n in hints.items() if hint not in h}
        assert not off, f"hints other than {hint!r}: {off}"


def reference(x):
    return x.sum(dim=-1)


CASES = [{"x": torch.arange(6.0).reshape(2, 3)}, {"x": torch.randn(4, 5)}]
MISTAKES = {"you summed over the wrong axis": lambda x: x.sum(dim=0)}


def test_reference_and_rewritten_solution_pass(capsys):
    check_function("T.1", reference, reference, CASES, mistakes=MISTAKES)
    check_function("T.1", lambda x: torch.einsum("ij->i", x), reference, CASES, mistakes=MISTAKES)
    assert capsys.readouterr().out.count("✓ Exercise T.1 passed") == 2


def test_known_mistake_gets_its_hint():
    square = [{"x": torch.randn(3, 3)}]  # same shape both ways, so only the hint can tell
    with pytest.raises(CheckFailed, match="wrong axis"):
        check_function("T.1", lambda x: x.sum(dim=0), reference, square, mistakes=MISTAKES)


def test_wrong_shape_unimplemented_and_crash_are_reported():
    with pytest.raises(CheckFailed, match=r"shape \(4,\), expected \(2,\)"):
        check_function("T.1", lambda x: torch.zeros(4), reference, CASES)
    def stub(x):
        raise NotImplementedError("fill me")
    with pytest.raises(CheckFailed, match="not implemented yet"):
        check_function("T.1", stub, reference, CASES)
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_function("T.1", lambda x: 1 / 0, reference, CASES)


def test_hard_coded_answer_fails_on_fresh_input():
    example = reference(**CASES[0])
    with pytest.raises(CheckFailed, match="on a fresh random input"):
        check_function("T.1", lambda x: example, reference, [CASES[0], {"x": torch.randn(2, 3)}])


def test_failure_renders_as_short_hint():
    err = CheckFailed("T.2", "your logit difference has the wrong sign")
    lines = err._render_traceback_()
    assert len(lines) == 3 and "T.2" in lines[0] and lines[1] == "Hint: your logit difference has the wrong sign"
    assert "mistake id h" in lines[2]  # a stable id for the class report, dimmed
    assert str(err) == "Exercise T.2: your logit difference has the wrong sign"


def test_check_value():
    check_value("T.3", {"a": 1.0}, {"a": 1.0 + 1e-6})
    with pytest.raises(CheckFailed, match="no answer yet"):
        check_value("T.3", None, 1)
    with pytest.raises(CheckFailed, match="sign"):
        check_value("T.3", -2.0, 2.0, mistakes={"the sign is flipped": -2.0})
    with pytest.raises(CheckFailed, match="not the expected"):
        check_value("T.3", 5.0, 2.0)


@pytest.mark.parametrize(
    "a, b, same",
    [
        (torch.ones(2), torch.ones(2) + 1e-6, True),
        (torch.ones(2), torch.ones(3), False),
        (torch.tensor([1, 2]), [1, 2], True),
        ([1, "x"], (1, "x"), True),
        ({"a": [1.0]}, {"a": [1.1]}, False),
        ("narrow technical", "narrow technical", True),
        (3, 3.00001, True),
        ("a", 1.0, False),
    ],
)
def test_close(a, b, same):
    assert close(a, b) is same


# ---------------------------------------------------------------- whole classes of wrong answers


def test_learner_gets_copies_and_in_place_edits_of_unchanged_arguments_fail():
    x = torch.arange(6.0).reshape(2, 3)
    cases = [{"x": x}]

    def edits_in_place(x):
        x.mul_(2)
        return x.sum(dim=-1) / 2  # the right answer, computed from a tensor it has changed

    check_function("T.4", edits_in_place, reference, cases)  # no copy asked: allowed, and the notebook's x survives
    assert torch.equal(x, torch.arange(6.0).reshape(2, 3))
    with pytest.raises(CheckFailed, match="changed its input `x` in place"):
        check_function("T.4", edits_in_place, reference, cases, unchanged=("x",))
    assert torch.equal(x, torch.arange(6.0).reshape(2, 3))


def test_models_and_caches_are_restored_and_their_edits_fail():
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]

    def zeroes_the_weights(model, x):
        with torch.no_grad():
            model.weight.zero_()
        return model(x)

    cases = [{"model": model, "x": torch.randn(4, 3)}]
    with pytest.raises(CheckFailed, match="changed `model` in place"):
        check_function("T.5", zeroes_the_weights, lambda model, x: model(x), cases)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_hook_that_edits_its_activation_in_place_fails():
    activation = torch.randn(2, 3)
    guarded = guard_hook("T.6", lambda act, hook: act.add_(1))
    with pytest.raises(CheckFailed, match="in place"):
        guarded(activation.clone())
    assert torch.equal(guard_hook("T.6", lambda act, hook: act + 1)(activation, None), activation + 1)


def seeded_reference(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def test_seeded_functions_must_repeat_and_not_use_the_global_random_state():
    cases = [{"n": 20, "seed": 0}, {"n": 30, "seed": 5}]
    check_function("T.7", seeded_reference, seeded_reference, cases, seed="seed")

    def global_rng(n, seed):
        return torch.randperm(n)

    with pytest.raises(CheckFailed, match="same seed, your function gave different answers"):
        check_function("T.7", global_rng, seeded_reference, cases, seed="seed")

    def reseeds_the_global_rng(n, seed):  # repeatable: it passes, and the notebook's random state is left alone
        torch.manual_seed(seed)
        return torch.randperm(n)

    def same_without_touching_the_global_rng(n, seed):
        with torch.random.fork_rng(devices=[]):
            return reseeds_the_global_rng(n, seed)

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    check_function("T.7", reseeds_the_global_rng, same_without_touching_the_global_rng, cases, seed="seed")
    assert torch.equal(torch.rand(3), expected_next), "the global random state is restored after the learner's code"


def test_a_mistake_hint_needs_the_mistake_on_every_case():
    cases = [{"x": torch.randn(3, 3)}, {"x": torch.randn(3, 3)}]
    first = cases[0]["x"]

    def wrong_axis_on_the_first_case_only(x):
        return x.sum(dim=0) if x is not None and torch.equal(x, first) else x.sum(dim=-1) * 2

    with pytest.raises(CheckFailed) as err:
        check_function("T.8", wrong_axis_on_the_first_case_only, reference, cases, mistakes=MISTAKES, hint="general hint")
    assert err.value.hint == "on the notebook's example general hint"
    with pytest.raises(CheckFailed, match="wrong axis"):
        check_function("T.8", lambda x: x.sum(dim=0), reference, cases, mistakes=MISTAKES)


class EqualsAnything:
    def __eq__(self, other):
        return True

    def __float__(self):
        return 6.0


class SneakyTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.Tensor.__eq__):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize(
    "returns, hint",
    [
        (lambda x: None, "returns None"),
        (lambda x: "text", "returned a str"),
        (lambda x: (x.sum(-1), x.sum(-1)), "returned a tuple of 2 items"),
        (lambda x: {"a": 1}, "returned a dict"),
        (lambda x: EqualsAnything(), "returned an EqualsAnything"),
        (lambda x: x.sum(-1).as_subclass(SneakyTensor) + 1, "compare with the example"),
        (lambda x: iter([1, 2]), "returned a list_iterator"),
        (lambda x: x.sum(-1)[None], "shape (1, 2), expected (2,)"),
        (lambda y: y.sum(-1), "must take the arguments (x)"),
        (lambda x: [[1.0, 2.0], [3.0]], "returned a list of 2 items; expected an array of shape (2,)"),
    ],
)
def test_whatever_the_learner_returns_gives_a_hint(returns, hint):
    with pytest.raises(CheckFailed) as err:
        check_function("T.9", returns, reference, CASES)
    assert hint in err.value.hint, err.value.hint


def test_a_tensor_for_a_tuple_and_a_tuple_for_a_tensor():
    pair = lambda x: (x.sum(-1), x.max(-1).values)  # noqa: E731
    with pytest.raises(CheckFailed, match="returned an array of shape"):
        check_function("T.10", lambda x: x.sum(-1), pair, CASES)
    with pytest.raises(CheckFailed, match="returned a tuple of 2 items; expected an array"):
        check_function("T.10", pair, reference, CASES)


def test_comparisons_do_not_go_through_replaceable_functions(monkeypatch):
    always = lambda *a, **k: True  # noqa: E731
    for owner, name in [(torch, "allclose"), (torch, "equal"), (torch, "isclose"), (np, "allclose"), (np, "array_equal"), (torch.Tensor, "__eq__")]:
        monkeypatch.setattr(owner, name, always)
    monkeypatch.setitem(vars(torch), "as_tensor", lambda *a, **k: torch.zeros(2))
    assert not close(torch.ones(2), torch.zeros(2))
    assert not close(np.ones(2), np.zeros(2))
    with pytest.raises(CheckFailed):
        check_function("T.11", lambda x: x.sum(dim=0)[:2] * 0, reference, CASES)


def test_a_torch_mode_left_active_by_the_learner_is_reported():
    from torch.overrides import TorchFunctionMode

    class Everything(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    def pushes_a_mode(x):
        Everything().__enter__()
        return x.sum(-1)

    try:
        with pytest.raises(EnvironmentChanged, match="torch mode"):
            check_function("T.12", pushes_a_mode, reference, CASES)
    finally:
        while torch._C._len_torch_function_stack():
            torch._C._pop_torch_function_stack()


def test_check_choice_grades_a_sealed_answer_and_never_stores_it_plainly(capsys):
    from mi_course.checks.core import check_choice, seal_choice

    options = {"A": "one story", "B": "another", "C": "a third"}
    sealed = seal_choice("9.1", "B", "B is what the control shows.")
    assert "B is what" not in "".join(sealed) and "B" not in sealed[1]
    assert check_choice("9.1", " b ", options, sealed) == "B is what the control shows."
    assert "✓ Exercise 9.1 passed" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="overlooks the control"):
        check_choice("9.1", "A", options, sealed, hints={"A": "overlooks the control"})
    with pytest.raises(CheckFailed, match="which option"):
        check_choice("9.1", "C", options, sealed)
    for bad, message in [(None, "no answer yet"), ("D", "unknown option"), (2, "one letter"), ({"B"}, "one letter")]:
        with pytest.raises(CheckFailed, match=message):
            check_choice("9.1", bad, options, sealed)
    # the same answer sealed for another exercise does not open this one
    with pytest.raises(CheckFailed):
        check_choice("9.2", "B", options, sealed)


def test_check_choice_with_several_options_names_how_many_are_misjudged():
    from mi_course.checks.core import check_choice, seal_choice

    options = {"A": "x", "B": "y", "C": "z"}
    sealed = seal_choice("9.3", {"A", "C"}, "A and C.")
    assert check_choice("9.3", ["c", "A"], options, sealed, several=True) == "A and C."
    with pytest.raises(CheckFailed, match="1 option.*C holds too"):
        check_choice("9.3", {"A"}, options, sealed, several=True, hints={"C": "C holds too"})
    with pytest.raises(CheckFailed, match="3 option"):
        check_choice("9.3", {"B"}, options, sealed, several=True)
    with pytest.raises(CheckFailed, match="set of letters"):
        check_choice("9.3", "AC", options, sealed, several=True)


def test_a_failure_carries_a_stable_mistake_id():
    def reference(x):
        return x * 2

    def doubles_then_adds_one(x):
        return x * 2 + 1

    cases = [dict(x=torch.arange(3.0)), dict(x=torch.randn(4))]
    ids = {}
    for learner in (doubles_then_adds_one, lambda x: x * 3, lambda x: None):
        with pytest.raises(CheckFailed) as info:
            check_function("9.4", learner, reference, cases, mistakes={"adds one after doubling": doubles_then_adds_one})
        ids[learner] = info.value.mistake
        assert f"mistake id {info.value.mistake}" in "\n".join(info.value._render_traceback_())
    assert list(ids.values())[:2] == ["doubles_then_adds_one", "generic"]
    assert list(ids.values())[2].startswith("h")  # "returns None": a digest of the hint's words
    with pytest.raises(CheckFailed) as info:
        check_value("9.5", None, 1.0)
    assert info.value.mistake == "no-answer"
    # the digest ignores numbers and spacing, so a hint that quotes a measured figure keeps its id
    assert CheckFailed("9.6", "off by 0.25 on  case 3").mistake == CheckFailed("9.6", "off by 1e-3 on case 7").mistake
