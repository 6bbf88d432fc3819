"""The check machinery shared by every exercise."""

from __future__ import annotations

import pytest
import torch

from mi_course.checks.core import CheckFailed, check_function, check_value, close


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
    assert len(lines) == 2 and "T.2" in lines[0] and lines[1] == "Hint: your logit difference has the wrong sign"
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
