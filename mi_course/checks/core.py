"""The machinery every exercise check uses.

A check runs the learner's function and the reference on the notebook's example and on
fresh random inputs. On success it prints one short line; on failure it raises
:class:`CheckFailed`, which IPython shows as one short paragraph instead of a traceback.

What a check guarantees, for every exercise that uses :func:`check_function`:

- The learner gets copies of every tensor, array and container argument, so its code cannot
  change the notebook's variables; models and caches, too big to copy, are compared with a
  snapshot afterwards (and restored if changed). Arguments listed in ``unchanged`` (where
  the exercise asks for a copy) must be left as they were: an in-place edit fails the check.
- A function with a ``seed`` argument is called twice per case with the same seed and the
  global random state disturbed in between: the answers must be identical. The global random
  state is restored after every call of the learner's code.
- The reference answers are computed before any of the learner's code runs, and answers
  are compared by :func:`close` with references to torch's and numpy's functions taken when
  this module was imported, on plain copies of the answers, with ``__torch_function__``
  handling switched off: replacing ``torch.allclose`` or pushing a torch mode cannot make a
  wrong answer pass (:mod:`mi_course.checks.environment` and the grader's verifier report it).
- A typical mistake's hint is given only when that mistake reproduces the learner's answer
  on every case; otherwise the general hint (or a shape or type hint) says what differs.
- Whatever the learner returns or raises, the check ends with a hint, not a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import itertools
import random
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from mi_course.checks import environment

__all__ = [
    "CheckFailed",
    "EnvironmentChanged",
    "call_learner",
    "check_choice",
    "check_function",
    "check_value",
    "close",
    "fresh_seed",
    "guard_hook",
    "passed",
    "register_plain",
    "separates",
    "separating_case",
]

# Private references, taken at import (before any learner code runs): the verdict goes
# through these, never through names that student code can rebind.
_Tensor = torch.Tensor
_TensorBase = torch._C.TensorBase
_Parameter = torch.nn.Parameter
_Module = torch.nn.Module
_no_grad = torch.no_grad
_t_equal = torch.equal
_no_torch_function = torch._C.DisableTorchFunction
_t_as_subclass = torch._C.TensorBase.as_subclass
_t_detach = torch._C.TensorBase.detach
_t_cpu = torch._C.TensorBase.cpu
_t_resolve_conj = torch._C.TensorBase.resolve_conj
_t_resolve_neg = torch._C.TensorBase.resolve_neg
_t_numpy = torch._C.TensorBase.numpy
_t_clone = torch._C.TensorBase.clone
_t_requires_grad_ = torch._C.TensorBase.requires_grad_
_t_is_bf16 = torch.bfloat16
_t_float = torch._C.TensorBase.float
_t_dtype = torch._C.TensorBase.dtype.__get__
_len_function_modes = torch._C._len_torch_function_stack
_len_dispatch_modes = torch._C._len_torch_dispatch_stack
_default_generator = torch.default_generator
_torch_get_state = torch._C.Generator.get_state
_torch_set_state = torch._C.Generator.set_state
_torch_manual_seed = torch._C.Generator.manual_seed
_ndarray = np.ndarray
_np_generic = np.generic
_np_item = np.generic.item
_np_asarray = np.asarray
_np_copy = np.ndarray.copy
_np_astype = np.ndarray.astype
_np_and_reduce = np.logical_and.reduce
_np_abs = np.absolute
_np_sub = np.subtract
_np_add = np.add
_np_mul = np.multiply
_np_le = np.less_equal
_np_eq = np.equal
_np_or = np.logical_or
_np_isnan = np.isnan
_np_float64 = np.float64
_np_bool = np.bool_
_np_get_state = np.random.get_state
_np_set_state = np.random.set_state
_np_seed = np.random.seed
_py_get_state = random.getstate
_py_set_state = random.setstate
_py_seed = random.seed
_randbits = secrets.randbits
_tuple_iter = tuple.__iter__
_list_iter = list.__iter__
_set_iter = set.__iter__
_frozenset_iter = frozenset.__iter__
_dict_items = dict.items
_PLAIN_SCALARS = (int, float, bool, complex, str, bytes, type(None))
_PLAIN_CLASSES: dict[type, Callable[[Any], Any]] = {}


def mistake_id(hint: str) -> str:
    """A stable id for a hint without a named mistake: a digest of its words (numbers left out)."""
    words = re.sub(r"[-+]?\d[\d.e+-]*", "#", " ".join(hint.lower().split()))
    return "h" + hashlib.sha1(words.encode()).hexdigest()[:8]


class CheckFailed(AssertionError):
    """A failed exercise check; IPython renders only the hint (``_render_traceback_``).

    ``mistake`` is a stable id of what went wrong, for the grader's class report: the name of
    the typical mistake that reproduced the answer, ``"no-answer"`` for a stub left in,
    ``"generic"`` for a wrong answer no known mistake explains, else a digest of the hint.
    """

    def __init__(self, exercise: str, hint: str, mistake: str | None = None):
        self.exercise = exercise
        self.hint = hint
        self.mistake = mistake or mistake_id(hint)
        super().__init__(f"Exercise {exercise}: {hint}")

    def _render_traceback_(self) -> list[str]:
        return [
            f"\x1b[31m✗ Exercise {self.exercise} not passed yet.\x1b[0m",
            f"Hint: {self.hint}",
            f"\x1b[2m(check {self.exercise}, mistake id {self.mistake})\x1b[0m",
        ]


def _named(exercise: str, wrong: Any, hint: str) -> str:
    """The id of a typical mistake: its function's name, else a digest of its hint."""
    name = getattr(wrong, "__name__", "")
    return name.strip("_") if name and name.isidentifier() else mistake_id(hint)


class EnvironmentChanged(RuntimeError):
    """Code run during a check changed what the check relies on (a torch mode, a replaced function)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m✗ {type(self).__name__}: {self}\x1b[0m"]


def passed(exercise: str, what: str) -> None:
    """Print the one-line success message."""
    print(f"✓ Exercise {exercise} passed: {what}")


def fresh_seed() -> int:
    """A new seed each call, so that an answer copied from one run cannot pass the next."""
    return _randbits(31)


def register_plain(cls: type, to_plain: Callable[[Any], Any]) -> None:
    """Compare instances of the course's class ``cls`` (exactly that class) as ``to_plain(obj)``."""
    _PLAIN_CLASSES[cls] = to_plain


# ---------------------------------------------------------------- plain copies of answers


class _Opaque:
    """An answer of a type the checks do not compare (its description, for the hint)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str):
        self.kind = kind


def _tensor_to_array(t: Any) -> np.ndarray:
    with _no_torch_function():
        t = _t_as_subclass(t, _Tensor)
        t = _t_resolve_neg(_t_resolve_conj(_t_cpu(_t_detach(t))))
        if _t_dtype(t) is _t_is_bf16:
            t = _t_float(t)
        return _np_copy(_t_numpy(t))


def _plain(x: Any, depth: int = 0) -> Any:
    """A copy of ``x`` made of numpy arrays, Python scalars, strings, tuples, lists, dicts and
    frozensets, built without running any code of ``x``'s own (no ``__eq__``, ``__iter__``,
    ``__array__`` or ``__float__`` of the learner's), so that the comparison is about values."""
    kind = type(x)
    if kind in _PLAIN_SCALARS:
        return x
    if depth > 50:
        return _Opaque("a structure nested too deeply")
    if issubclass(kind, _TensorBase):
        try:
            return _tensor_to_array(x)
        except Exception:
            return _Opaque(f"a {kind.__name__} whose values cannot be read")
    if issubclass(kind, _ndarray):
        return _np_copy(_np_asarray(x))
    if issubclass(kind, _np_generic):
        return _np_item(x)
    if kind in _PLAIN_CLASSES:
        return _plain(_PLAIN_CLASSES[kind](x), depth + 1)
    if issubclass(kind, tuple):
        return tuple(_plain(v, depth + 1) for v in _tuple_iter(x))
    if issubclass(kind, list):
        return [_plain(v, depth + 1) for v in _list_iter(x)]
    if issubclass(kind, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in _dict_items(x)}
    if issubclass(kind, (set, frozenset)):
        items = _set_iter(x) if issubclass(kind, set) else _frozenset_iter(x)
        try:
            return frozenset(_plain(v, depth + 1) for v in items)
        except TypeError:
            return _Opaque("a set of unhashable items")
    if issubclass(kind, int) and not issubclass(kind, bool):  # an int subclass, e.g. an IntEnum
        return int.__index__(x)
    if issubclass(kind, float):
        return float.__float__(x)
    return _Opaque(_describe_type(kind))


def _describe_type(kind: type) -> str:
    name = kind.__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _describe(x: Any) -> str:
    """What the (plain) answer is, in words, for a hint."""
    if isinstance(x, _Opaque):
        return x.kind
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"an array of shape {tuple(x.shape)}" if x.ndim else "a single number (a 0-d tensor)"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} item{'s' if len(x) != 1 else ''}"
    if isinstance(x, dict):
        return f"a dict of {len(x)} item{'s' if len(x) != 1 else ''}"
    if isinstance(x, frozenset):
        return f"a set of {len(x)} item{'s' if len(x) != 1 else ''}"
    return _describe_type(type(x))


def _kind(x: Any) -> str:
    """A coarse kind of a plain answer: array, number, sequence, mapping, set, text, none, other."""
    if isinstance(x, np.ndarray):
        return "array"
    if isinstance(x, (bool, int, float, complex)):
        return "number"
    if isinstance(x, (tuple, list)):
        return "sequence"
    if isinstance(x, dict):
        return "mapping"
    if isinstance(x, frozenset):
        return "set"
    if isinstance(x, (str, bytes)):
        return "text"
    return "none" if x is None else "other"


def _all_true(x: Any) -> bool:
    return bool(_np_and_reduce(_np_asarray(x), axis=None))


def _arrays_close(g: np.ndarray, e: np.ndarray, atol: float, rtol: float) -> bool:
    if g.shape != e.shape:
        return False
    if g.dtype.kind in "US" or e.dtype.kind in "US" or g.dtype.kind == "O" or e.dtype.kind == "O":
        return False
    exact = {g.dtype.kind, e.dtype.kind}
    if exact <= set("biu"):
        return _all_true((_np_eq(_np_astype(g, np.int64), _np_astype(e, np.int64))))
    if "c" in exact:
        return False
    g64, e64 = _np_astype(g, _np_float64), _np_astype(e, _np_float64)
    if exact & set("biu"):  # integers or booleans on one side: equal values only (3.0 for 3, not 2.5)
        return _all_true((_np_eq(g64, e64)))
    with np.errstate(invalid="ignore", over="ignore"):
        near = _np_le(_np_abs(_np_sub(g64, e64)), _np_add(atol, _np_mul(rtol, _np_abs(e64))))
        same = _np_eq(g64, e64)  # equal infinities
    return _all_true((_np_or(near, same)))


def _plain_close(g: Any, e: Any, atol: float, rtol: float) -> bool:
    """``close`` on plain copies (nothing here can run the learner's code)."""
    if isinstance(g, _Opaque) or isinstance(e, _Opaque):
        return False
    if isinstance(e, float) and isinstance(g, np.ndarray) and g.size == 1 and g.dtype.kind in "biuf":
        g = float(g.reshape(-1)[0])  # a number asked for, a one-element tensor given: compare the number
    if isinstance(e, np.ndarray) or isinstance(g, np.ndarray):
        try:
            ga = g if isinstance(g, np.ndarray) else _np_asarray(g)
            ea = e if isinstance(e, np.ndarray) else _np_asarray(e)
        except (TypeError, ValueError, OverflowError):
            return False
        return _arrays_close(ga, ea, atol, rtol)
    if isinstance(e, float) or isinstance(g, float):
        if not isinstance(g, (int, float)) or not isinstance(e, (int, float)):
            return False
        g, e = float(g), float(e)
        return g == e or abs(g - e) <= atol + rtol * abs(e)
    if isinstance(e, dict):
        return isinstance(g, dict) and set(g) == set(e) and all(_plain_close(g[k], e[k], atol, rtol) for k in e)
    if isinstance(e, (list, tuple)):
        return isinstance(g, (list, tuple)) and len(g) == len(e) and all(_plain_close(a, b, atol, rtol) for a, b in zip(g, e))
    if isinstance(e, frozenset):
        return isinstance(g, frozenset) and g == e
    if isinstance(e, bool) or isinstance(g, bool):
        return type(g) is type(e) and g == e
    return type(g) in _PLAIN_SCALARS and type(e) in _PLAIN_SCALARS and g == e


def close(got: Any, expected: Any, *, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    """Whether two answers agree: tensors and arrays by value and shape, the rest by equality."""
    try:
        return _plain_close(_plain(got), _plain(expected), atol, rtol)
    except Exception:  # a malformed answer is a wrong answer
        return False


def _shape(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if isinstance(x, np.ndarray) else None


# ---------------------------------------------------------------- calling the learner's code


def _copy_arg(x: Any, depth: int = 0) -> Any:
    """What the learner gets for an argument: tensors cloned, containers copied; other objects as they are."""
    kind = type(x)
    if depth > 20:
        return x
    if issubclass(kind, _TensorBase) and not issubclass(kind, _Parameter):
        with _no_grad():
            copy = _t_clone(_t_detach(x))
        return _t_requires_grad_(copy, x.requires_grad) if x.is_leaf else copy
    if issubclass(kind, _ndarray):
        return _np_copy(x)
    if kind is list:
        return [_copy_arg(v, depth + 1) for v in x]
    if kind is tuple:
        return tuple(_copy_arg(v, depth + 1) for v in x)
    if kind is dict:
        return {k: _copy_arg(v, depth + 1) for k, v in x.items()}
    if kind is set:
        return set(x)
    return x


def _tensors_of(x: Any) -> list[tuple[str, torch.Tensor]] | None:
    """The tensors inside a model or a cache (by name), to compare before and after; None for other objects."""
    if isinstance(x, _Module):
        return [(f"parameter {n}", p) for n, p in x.named_parameters()] + [(f"buffer {n}", b) for n, b in x.named_buffers()]
    cache = getattr(type(x), "__name__", "") == "ActivationCache" and getattr(x, "cache_dict", None)
    if isinstance(cache, dict):
        return [(f"entry {n!r}", t) for n, t in cache.items() if isinstance(t, _Tensor)]
    return None


def _hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class _Guard:
    """Snapshots of the models and caches among a check's arguments, which the learner gets as they are."""

    def __init__(self, cases: list[Mapping[str, Any]]):
        self.items: list[tuple[str, Any, list, list, Any]] = []
        seen: set[int] = set()
        for case in cases:
            for name, value in case.items():
                tensors = _tensors_of(value)
                if tensors is None or id(value) in seen:
                    continue
                seen.add(id(value))
                with _no_grad():
                    saved = [_t_clone(_t_detach(t)) for _, t in tensors]
                extra = None
                if isinstance(value, _Module):
                    cfg = getattr(value, "cfg", None)
                    extra = (_hook_count(value), dict(vars(cfg)) if cfg is not None else None, value.training)
                self.items.append((name, value, tensors, saved, extra))

    def check(self, exercise: str) -> None:
        """Restore anything the learner changed, and fail the check if it did."""
        for name, value, tensors, saved, extra in self.items:
            changed = []
            with _no_grad():
                for (label, t), s in zip(tensors, saved):
                    if t.shape != s.shape or not _t_equal(t, s):
                        changed.append(label)
                        if t.shape == s.shape:
                            t.copy_(s)
            if extra is not None:
                hooks, cfg, training = extra
                if _hook_count(value) != hooks:
                    if hasattr(value, "reset_hooks"):
                        value.reset_hooks(including_permanent=False)
                    raise CheckFailed(
                        exercise,
                        f"your function left a hook on `{name}`: add hooks only for one run, with "
                        "model.run_with_hooks(..., fwd_hooks=[...]) or `with model.hooks(...):`, which remove them afterwards.",
                    )
                if cfg is not None and dict(vars(value.cfg)) != cfg:
                    diff = sorted(k for k in cfg if vars(value.cfg).get(k, cfg[k]) != cfg[k])
                    vars(value.cfg).update(cfg)
                    raise CheckFailed(
                        exercise,
                        f"your function changed `{name}.cfg` ({', '.join(diff) or 'its settings'}) and left it changed: "
                        "leave the model's settings as they were (a context manager such as edge_patching_hooks(model) restores them).",
                    )
                if value.training != training:
                    value.train(training)
            if changed:
                raise CheckFailed(
                    exercise,
                    f"your function changed `{name}` in place ({changed[0]}{' and more' if len(changed) > 1 else ''}): "
                    "leave the notebook's models and caches as they are, and edit copies (`.clone()`) instead.",
                )


class _RandomState:
    """The global random state of torch, numpy and random: saved, disturbed, restored."""

    def __init__(self):
        self.torch, self.numpy, self.python = _torch_get_state(_default_generator), _np_get_state(), _py_get_state()

    def restore(self) -> None:
        _torch_set_state(_default_generator, self.torch)
        _np_set_state(self.numpy)
        _py_set_state(self.python)

    @staticmethod
    def disturb() -> None:
        seed = _randbits(31)
        _torch_manual_seed(_default_generator, seed)
        _np_seed(seed)
        _py_seed(seed)


def _signature_hint(learner: Callable, args: tuple, kwargs: Mapping[str, Any]) -> str | None:
    """A hint when ``learner`` cannot take these arguments (renamed or missing parameters)."""
    try:
        signature = inspect.signature(learner)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        expected = ", ".join([f"arg{i + 1}" for i in range(len(args))] + list(kwargs))
        return f"your function must take the arguments ({expected}); yours is {getattr(learner, '__name__', 'it')}{signature} ({err})."
    return None


def _environment_check() -> None:
    if _len_function_modes() or _len_dispatch_modes():
        raise EnvironmentChanged(
            "the learner's code left a torch mode active (__torch_function__ or __torch_dispatch__); "
            "the check cannot be trusted: " + (environment.modes_active() or "")
        )


def call_learner(exercise: str, learner: Callable, *args: Any, unchanged: Iterable[str] = (), unchanged_hint: str | None = None, **kwargs: Any) -> Any:
    """Call the learner's code with copies of the arguments, turning whatever goes wrong into a hint.

    The global random state is restored afterwards. Arguments named in ``unchanged`` (or
    positional ones, as ``"0"``, ``"1"``...) must be left as they were.
    """
    if not callable(learner):
        raise CheckFailed(exercise, f"expected a function, got {_describe(_plain(learner))}.")
    copies = tuple(_copy_arg(a) for a in args)
    kw_copies = {k: _copy_arg(v) for k, v in kwargs.items()}
    hint = _signature_hint(learner, copies, kw_copies)
    if hint is not None:
        raise CheckFailed(exercise, hint)
    state = _RandomState()
    try:
        got = learner(*copies, **kw_copies)
    except NotImplementedError:
        raise CheckFailed(exercise, "not implemented yet: replace the `raise NotImplementedError` line.", "no-answer") from None
    except CheckFailed:
        raise
    except RecursionError:
        raise CheckFailed(exercise, "your function raised RecursionError: it calls itself without end.") from None
    except Exception as err:  # the learner's bug, reported briefly
        raise CheckFailed(exercise, f"your function raised {type(err).__name__}: {err}") from None
    finally:
        state.restore()
    _environment_check()
    names = {str(i): (args[i], copies[i]) for i in range(len(args))} | {k: (kwargs[k], kw_copies[k]) for k in kwargs}
    for name in unchanged:
        if name in names and names[name][1] is not names[name][0] and not _same(names[name][1], names[name][0]):
            label = f"argument {int(name) + 1}" if name.isdigit() else f"`{name}`"
            raise CheckFailed(
                exercise,
                unchanged_hint
                or f"your function changed its input {label} in place: the exercise asks for a copy. Start from "
                f"`{name if not name.isdigit() else 'x'}.clone()`, edit that and return it, and leave the argument as it was.",
            )
    return got


def _same(a: Any, b: Any) -> bool:
    """Exactly equal (NaNs equal to NaNs), as plain copies."""
    pa, pb = _plain(a), _plain(b)
    if isinstance(pa, np.ndarray) and isinstance(pb, np.ndarray):
        if pa.shape != pb.shape or pa.dtype != pb.dtype:
            return False
        if pa.dtype.kind in "fc":
            return _all_true((_np_or(_np_eq(pa, pb), _np_isnan(pa) & _np_isnan(pb))))
        return _all_true((_np_eq(pa, pb)))
    return _plain_close(pa, pb, 0.0, 0.0)


def guard_hook(exercise: str, hook_fn: Callable, hint: str | None = None) -> Callable:
    """Wrap the learner's hook for a forward pass: it must not edit the activation it is given in place."""
    if not callable(hook_fn):
        raise CheckFailed(exercise, f"your function must return a hook function, not {_describe(_plain(hook_fn))}.")

    def guarded(activation, hook=None):
        before = _t_clone(_t_detach(activation))
        try:
            out = hook_fn(activation, hook)
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as err:
            raise CheckFailed(exercise, f"your hook function raised {type(err).__name__}: {err}") from None
        if not _same(activation, before):
            raise CheckFailed(
                exercise,
                hint
                or "your hook edits the activation it receives in place: the exercise asks for a copy. Start with "
                "`activation = activation.clone()`, edit the copy and return it.",
            )
        return out

    return guarded


def check_seeded(exercise: str, learner: Callable, *args: Any, seed_hint: str | None = None, **kwargs: Any) -> Any:
    """Call the learner twice with the same arguments (seed included), the global random state
    disturbed before the second call; fail unless both answers are identical. Returns the first."""
    first = call_learner(exercise, learner, *args, **kwargs)
    state = _RandomState()
    try:
        _RandomState.disturb()
        second = call_learner(exercise, learner, *args, **kwargs)
    finally:
        state.restore()
    if not _same(first, second):
        raise CheckFailed(
            exercise,
            seed_hint
            or "called twice with the same seed, your function gave different answers: draw every random number from "
            "a generator seeded with `seed` (gen = torch.Generator().manual_seed(seed), then torch.randperm(n, generator=gen)), "
            "not from the global random state.",
        )
    return first


# ---------------------------------------------------------------- fresh cases that separate the mistakes


def separates(case: Mapping[str, Any], reference: Callable, mistakes: Iterable[Callable], *, tol: float = 1e-3, pairwise: bool = True) -> bool:
    """Whether, on ``case``, the reference and every mistake give different answers (a mistake that
    raises counts as different): then each mistake fails on this case for certain. With ``pairwise``,
    the mistakes also differ from each other, so that a learner matching one of them everywhere is told which."""
    answers = [_plain(reference(**case))]
    for wrong in mistakes:
        try:
            answers.append(_plain(wrong(**case)))
        except Exception:
            continue
    pairs = [(0, j) for j in range(1, len(answers))] if not pairwise else [(i, j) for i in range(len(answers)) for j in range(i + 1, len(answers))]
    return not any(_plain_close(answers[i], answers[j], tol, 0.0) for i, j in pairs)


def separating_case(
    draw: Callable[[int], Mapping[str, Any]], reference: Callable, mistakes: Iterable[Callable], seed: int, *, tries: int = 50, tol: float = 1e-3, pairwise: bool = True
) -> dict[str, Any]:
    """A fresh case ``draw(s)`` (for seeds derived from ``seed``) on which :func:`separates` holds."""
    mistakes = list(mistakes)
    stream = random.Random(seed)
    for _ in range(tries):
        case = dict(draw(stream.getrandbits(31)))
        if separates(case, reference, mistakes, tol=tol, pairwise=pairwise):
            return case
    raise RuntimeError(f"no fresh case in {tries} draws separates the reference from every typical mistake")


# ---------------------------------------------------------------- the checks


def _matches_everywhere(wrong: Callable, cases: list[Mapping[str, Any]], answers: list[Any], atol: float, rtol: float) -> bool:
    for case, got in zip(cases, answers):
        try:
            out = _plain(wrong(**case))
        except Exception:
            return False
        if not _plain_close(got, out, atol, rtol):
            return False
    return True


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
    unchanged: Iterable[str] = (),
    unchanged_hint: str | None = None,
    seed: str | None = None,
    seed_hint: str | None = None,
    shape_hint: Callable[[tuple[int, ...], tuple[int, ...], Mapping[str, Any]], str | None] | None = None,
) -> None:
    """Compare ``learner(**case)`` with ``reference(**case)`` on every case.

    ``cases`` should hold the notebook's example first, then fresh random inputs.
    ``mistakes`` maps a hint to a function that makes that mistake; its hint is given when it
    reproduces the learner's answer on every case. ``unchanged`` names the arguments the
    exercise asks not to modify; ``seed`` names the seed argument of a random function (its
    answers must repeat exactly). ``shape_hint(got_shape, expected_shape, case)`` may name what a
    wrong shape means.
    """
    cases = [dict(case) for case in cases]
    if not callable(learner):
        raise CheckFailed(exercise, f"expected a function, got {_describe(_plain(learner))}.")
    unchanged = tuple(unchanged)
    expected = [_plain(reference(**case)) for case in cases]  # before any of the learner's code runs
    guard = _Guard(cases)
    answers = []
    for case in cases:
        try:
            if seed is not None:
                got = check_seeded(exercise, learner, seed_hint=seed_hint, unchanged=unchanged, unchanged_hint=unchanged_hint, **case)
            else:
                got = call_learner(exercise, learner, unchanged=unchanged, unchanged_hint=unchanged_hint, **case)
        finally:
            guard.check(exercise)
        answers.append(_plain(got))
    failing = [i for i, (g, e) in enumerate(zip(answers, expected)) if not _plain_close(g, e, atol, rtol)]
    if not failing:
        fresh = len(cases) - 1
        passed(exercise, f"{success} (the example and {fresh} fresh random input{'s' if fresh != 1 else ''}).")
        return
    for mistake_hint, wrong in mistakes.items():
        if _matches_everywhere(wrong, cases, answers, atol, rtol):
            raise CheckFailed(exercise, mistake_hint, _named(exercise, wrong, mistake_hint))
    i = failing[0]
    said = _what_differs(answers[i], expected[i], i, hint, shape_hint, cases[i])
    raise CheckFailed(exercise, said, "generic" if said.endswith(hint) else None)


_COMPATIBLE = {frozenset({"array", "number"}), frozenset({"array", "sequence"})}


def _what_differs(got: Any, want: Any, index: int, hint: str, shape_hint: Callable | None, case: Mapping[str, Any]) -> str:
    """The hint for a wrong answer that no typical mistake explains: its shape or type if that is off, else ``hint``."""
    where = "on the notebook's example" if index == 0 else "on a fresh random input"
    if got is None and want is not None:
        return "your function returns None: did you forget the `return` statement?"
    got_shape = _shape(got) if _shape(got) is not None else (() if _kind(got) == "number" else None)
    if _shape(want) is not None and got_shape is not None and got_shape != _shape(want):
        custom = shape_hint(got_shape, _shape(want), case) if shape_hint is not None else None
        return custom or f"{where} your result has shape {got_shape}, expected {_shape(want)}."
    kinds = frozenset({_kind(got), _kind(want)})
    if kinds == frozenset({"array", "sequence"}):  # a list for a tensor is fine if it has the tensor's shape
        try:
            same_shape = _np_asarray(got if _kind(got) == "sequence" else want).shape == (want if _kind(want) == "array" else got).shape
        except (TypeError, ValueError):
            same_shape = False
        if not same_shape:
            return f"{where} your function returned {_describe(got)}; expected {_describe(want)}."
    elif len(kinds) > 1 and kinds not in _COMPATIBLE:
        return f"{where} your function returned {_describe(got)}; expected {_describe(want)}."
    if _kind(want) == _kind(got) == "sequence" and len(got) != len(want) or _kind(want) == _kind(got) == "mapping" and set(got) != set(want):
        return f"{where} your function returned {_describe(got)}; expected {_describe(want)}" + (
            " (with other keys)." if _kind(want) == "mapping" and len(got) == len(want) else "."
        )
    return f"{where} {hint}"


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
        raise CheckFailed(exercise, "no answer yet: fill in the exercise cell above.", "no-answer")
    got = _plain(got)
    if _plain_close(got, _plain(expected), atol, rtol):
        passed(exercise, success)
        return
    for mistake_hint, wrong in mistakes.items():
        if _plain_close(got, _plain(wrong), atol, rtol):
            raise CheckFailed(exercise, mistake_hint)
    raise CheckFailed(exercise, hint, "generic")


# Interpretation and prediction questions ---------------------------------------------------
#
# A question with stated options keeps its answer sealed, so that reading the package does not
# give it away: a salt, a digest of the right option(s) and the explanation encrypted with a key
# made from them. ``seal_choice`` makes the entry (for course authors); ``check_choice`` grades.


def _choice_key(exercise: str, salt: str, answer: frozenset[str]) -> bytes:
    return hashlib.sha256(f"mi-course {exercise}|{salt}|{','.join(sorted(answer))}".encode()).digest()


def _keystream(key: bytes, n: int) -> bytes:
    return b"".join(hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))[:n]


def _choice_digest(key: bytes) -> str:
    return hashlib.sha256(b"answer" + key).hexdigest()[:32]


def seal_choice(exercise: str, answer: str | Iterable[str], why: str) -> tuple[str, str, str]:
    """For course authors: the sealed entry of a question whose right option(s) are ``answer``."""
    options = frozenset([answer] if isinstance(answer, str) else answer)
    salt = secrets.token_hex(8)
    key = _choice_key(exercise, salt, options)
    data = why.encode()
    sealed = bytes(a ^ b for a, b in zip(data, _keystream(key, len(data))))
    return salt, _choice_digest(key), base64.b64encode(sealed).decode()


def _unseal(exercise: str, sealed: tuple[str, str, str], answer: frozenset[str]) -> str | None:
    salt, digest, text = sealed
    key = _choice_key(exercise, salt, answer)
    if not hmac.compare_digest(_choice_digest(key), digest):
        return None
    data = base64.b64decode(text)
    return bytes(a ^ b for a, b in zip(data, _keystream(key, len(data)))).decode()


def check_choice(
    exercise: str,
    got: Any,
    options: Mapping[str, str],
    sealed: tuple[str, str, str],
    *,
    several: bool = False,
    hints: Mapping[str, str] = {},
) -> str:
    """Grade a choice among stated ``options`` (letter -> statement) against a sealed answer.

    ``got`` is one letter, or with ``several=True`` a set of letters. ``hints`` maps a wrong
    option (or, with ``several``, a letter that is wrongly in or out) to what it overlooks. On
    success the sealed explanation is printed and returned.
    """
    letters = sorted(options)
    if got is None or got is Ellipsis:
        raise CheckFailed(exercise, "no answer yet: fill in the exercise cell above.", "no-answer")
    if several:
        if isinstance(got, str) or not isinstance(got, (set, frozenset, list, tuple)):
            raise CheckFailed(exercise, f"give a set of letters such as {{'{letters[0]}'}} (set() for none), not {got!r}.")
        given = frozenset(str(g).strip().upper() for g in got)
    else:
        if not isinstance(got, str):
            raise CheckFailed(exercise, f"give one letter as a string, one of {letters}, not {got!r}.")
        given = frozenset([got.strip().upper()])
    unknown = sorted(given - set(letters))
    if unknown:
        raise CheckFailed(exercise, f"unknown option(s) {unknown}: choose among {letters}.")
    why = _unseal(exercise, sealed, given)
    if why is not None:
        passed(exercise, why)
        return why
    if several:
        for n in range(len(letters) + 1):
            for combo in map(frozenset, itertools.combinations(letters, n)):
                if _unseal(exercise, sealed, combo) is not None:
                    wrong = sorted(given ^ combo)
                    said = [hints[w] for w in wrong if w in hints]
                    detail = " ".join(said) if said else "read the options again against the evidence above."
                    raise CheckFailed(exercise, f"{len(wrong)} option(s) misjudged. {detail}", "options-" + "".join(wrong))
        raise RuntimeError(f"{exercise}: no set of options matches the sealed answer")
    (letter,) = given
    if letter in hints:
        raise CheckFailed(exercise, hints[letter], f"option-{letter}")
    raise CheckFailed(exercise, "not this one: which option does the evidence above actually support?", "generic")
