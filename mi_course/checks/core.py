"""The machinery every exercise check uses.

A check runs the learner's function and the reference on the notebook's example and on
fresh random inputs. When the answers differ it tries the implementations of typical
mistakes: the first one that reproduces the learner's answer names the hint. On success
it prints one short line; on failure it raises :class:`CheckFailed`, which IPython shows
as one short paragraph instead of a traceback.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CheckFailed", "check_function", "check_value", "close", "fresh_seed", "passed"]


class CheckFailed(AssertionError):
    """A failed exercise check; IPython renders only the hint (``_render_traceback_``)."""

    def __init__(self, exercise: str, hint: str):
        self.exercise = exercise
        self.hint = hint
        super().__init__(f"Exercise {exercise}: {hint}")

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m✗ Exercise {self.exercise} not passed yet.\x1b[0m", f"Hint: {self.hint}"]


def passed(exercise: str, what: str) -> None:
    """Print the one-line success message."""
    print(f"✓ Exercise {exercise} passed: {what}")


def fresh_seed() -> int:
    """A new seed each call, so that an answer copied from one run cannot pass the next."""
    return secrets.randbits(31)


def close(got: Any, expected: Any, *, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    """Whether two answers agree: tensors and arrays by value and shape, the rest by equality."""
    if isinstance(expected, (torch.Tensor, np.ndarray)) or isinstance(got, (torch.Tensor, np.ndarray)):
        try:
            g = torch.as_tensor(np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got))
            e = torch.as_tensor(np.asarray(expected.detach().cpu() if isinstance(expected, torch.Tensor) else expected))
        except (TypeError, ValueError):
            return False
        if g.shape != e.shape:
            return False
        if g.dtype == torch.bool or e.dtype == torch.bool or not g.is_floating_point() and not e.is_floating_point():
            return bool(torch.equal(g.to(e.dtype), e))
        return bool(torch.allclose(g.double(), e.double(), atol=atol, rtol=rtol))
    if isinstance(expected, float) or isinstance(got, float):
        try:
            return abs(float(got) - float(expected)) <= atol + rtol * abs(float(expected))
        except (TypeError, ValueError):
            return False
    if isinstance(expected, Mapping):
        return (
            isinstance(got, Mapping)
            and set(got) == set(expected)
            and all(close(got[k], expected[k], atol=atol, rtol=rtol) for k in expected)
        )
    if isinstance(expected, (list, tuple)) and not isinstance(expected, str):
        return (
            isinstance(got, (list, tuple))
            and len(got) == len(expected)
            and all(close(g, e, atol=atol, rtol=rtol) for g, e in zip(got, expected))
        )
    return got == expected


def _shape(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if isinstance(x, (torch.Tensor, np.ndarray)) else None


def check_function(
    exercise: str,
    learner: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[Mapping[str, Any]],
    *,
    mistakes: Mapping[str, Callable[..., Any]] = {},
    hint: str = "your answer differs from the reference; compare with the example above.",
    success: str = "matches the reference",
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> None:
    """Compare ``learner(**case)`` with ``reference(**case)`` on every case.

    ``cases`` should hold the notebook's example first, then fresh random inputs.
    ``mistakes`` maps a hint to a function that makes that mistake; when the learner's
    answer matches one of them, the failure names that hint.
    """
    cases = list(cases)
    if not callable(learner):
        raise CheckFailed(exercise, f"expected a function, got {type(learner).__name__}.")
    for i, case in enumerate(cases):
        where = "on the notebook's example" if i == 0 else "on a fresh random input"
        expected = reference(**case)
        try:
            got = learner(**case)
        except NotImplementedError:
            raise CheckFailed(exercise, "not implemented yet: replace the `raise NotImplementedError` line.") from None
        except CheckFailed:
            raise
        except Exception as err:  # the learner's bug, reported briefly
            raise CheckFailed(exercise, f"your function raised {type(err).__name__}: {err}") from None
        if close(got, expected, atol=atol, rtol=rtol):
            continue
        if _shape(expected) is not None and _shape(got) != _shape(expected):
            raise CheckFailed(
                exercise, f"{where} your result has shape {_shape(got)}, expected {_shape(expected)}."
            )
        for mistake_hint, wrong in mistakes.items():
            try:
                if close(got, wrong(**case), atol=atol, rtol=rtol):
                    raise CheckFailed(exercise, mistake_hint)
            except CheckFailed:
                raise
            except Exception:
                continue
        raise CheckFailed(exercise, f"{where} {hint}")
    fresh = len(cases) - 1
    passed(exercise, f"{success} (the example and {fresh} fresh random input{'s' if fresh != 1 else ''}).")


def check_value(
    exercise: str,
    got: Any,
    expected: Any,
    *,
    mistakes: Mapping[str, Any] = {},
    hint: str = "not the expected answer yet.",
    success: str = "correct",
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> None:
    """Compare a value answer with the expected one; ``mistakes`` maps hints to wrong values."""
    if got is None or got is Ellipsis:
        raise CheckFailed(exercise, "no answer yet: fill in the exercise cell above.")
    if close(got, expected, atol=atol, rtol=rtol):
        passed(exercise, success)
        return
    for mistake_hint, wrong in mistakes.items():
        if close(got, wrong, atol=atol, rtol=rtol):
            raise CheckFailed(exercise, mistake_hint)
    raise CheckFailed(exercise, hint)
