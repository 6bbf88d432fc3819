"""What the checks' verdicts rely on, and whether code run since then has changed it.

A check computes its reference answers with torch and numpy, and compares them with the
learner's answers. Student code runs in the same process: it could replace
``torch.allclose``, ``torch.Tensor.__eq__``, a numpy function or a builtin (by any route:
``setattr``, ``vars(torch)[...]``, a module's ``__dict__``, swapping a function's
``__code__``, a module's ``__class__``, an entry of ``sys.modules``), or intercept every
torch call without replacing anything (a ``__torch_function__`` or ``__torch_dispatch__``
mode, or a Python kernel registered for an aten operator), so that a wrong answer compares
equal to the reference.

:func:`baseline` records, once, before any student code has run (the grader calls it in a
cell of its own before the first exercise cell; a check calls it otherwise), every function,
class and module bound in the loaded modules of torch, numpy, the standard modules the
checks use and the course's packages, the attributes of their Python classes, the code of
their Python functions, and the state of torch's dispatcher (modes, thread-local dispatch
keys, registered kernels, and the kernels of the operators a comparison uses).
:func:`changes` lists what differs now, whatever route changed it; :func:`digest` names the
baseline itself, so that the grader can tell (outside the kernel) that it was not replaced.
The comparison is by identity, so it costs tens of milliseconds, not a re-import.
"""

from __future__ import annotations

import hashlib
import operator
import os
import sys
import types

__all__ = ["baseline", "changes", "digest", "modes_active"]

ROOTS = ("torch", "numpy", "builtins", "math", "cmath", "operator", "random", "secrets", "hashlib", "hmac",
         "functools", "itertools", "collections", "copy", "inspect", "numbers", "einops", "mi_course")  # fmt: skip
# Parts of torch and numpy that eager computation on the CPU does not go through (compilers,
# exporters, distributed and device back ends, tracing): left out, to keep the check fast.
_SKIPPED = ("torch._dynamo", "torch._inductor", "torch.distributed", "torch.fx", "torch.ao", "torch._functorch",
            "torch.distributions", "torch._higher_order_ops", "torch._numpy", "torch.onnx", "torch.jit", "torch._subclasses",
            "torch._refs", "torch.export", "torch._export", "torch._library", "torch._meta_registrations", "torch.package",
            "torch._decomp", "torch.profiler", "torch._guards", "torch.cuda", "torch.xpu", "torch.mps", "torch.mtia",
            "torch.testing", "torch._prims", "torch._prims_common", "torch.compiler", "torch._logging", "torch.quantization",
            "torch.masked", "torch.nested", "torch._strobelight", "torch._lazy", "torch.utils.data", "torch.utils.benchmark",
            "torch.utils._sympy", "torch._vendor", "torch.accelerator", "torch._native", "torch.onnx", "torch._awaits",
            "numpy.f2py", "numpy.ma", "numpy.polynomial", "numpy.testing", "numpy.distutils", "numpy.typing", "einops._backends")  # fmt: skip
# Builtins that IPython and ipykernel rebind on every cell (their own helpers, not Python's).
_VOLATILE_BUILTINS = frozenset({"input", "raw_input", "exit", "quit", "get_ipython", "display", "help", "copyright", "credits", "license", "_", "__", "___"})
# Operators a comparison goes through: their dispatcher entries are compared in full.
_OPS = ("aten::allclose", "aten::isclose", "aten::equal", "aten::eq.Tensor", "aten::eq.Scalar", "aten::ne.Tensor",
        "aten::le.Tensor", "aten::lt.Tensor", "aten::ge.Tensor", "aten::gt.Tensor", "aten::sub.Tensor", "aten::add.Tensor",
        "aten::mul.Tensor", "aten::div.Tensor", "aten::abs", "aten::all", "aten::any", "aten::sum", "aten::mean",
        "aten::detach", "aten::alias", "aten::clone", "aten::copy_", "aten::_to_copy", "aten::to.dtype", "aten::resolve_conj",
        "aten::resolve_neg", "aten::contiguous", "aten::view", "aten::reshape", "aten::mm", "aten::bmm", "aten::matmul",
        "aten::addmm", "aten::linear", "aten::index.Tensor", "aten::index_put_", "aten::gather", "aten::scatter.src",
        "aten::where.self", "aten::max", "aten::argmax", "aten::topk", "aten::sort", "aten::norm.ScalarOpt_dim",
        "aten::linalg_vector_norm", "aten::exp", "aten::log", "aten::softmax.int", "aten::log_softmax.int",
        "aten::_softmax", "aten::_log_softmax", "aten::isnan", "aten::isfinite")  # fmt: skip
_KEYS = ("CPU", "CUDA", "Autograd", "AutogradCPU", "CompositeImplicitAutograd", "CompositeExplicitAutograd",
         "ADInplaceOrView", "Python", "PythonTLSSnapshot", "PythonDispatcher", "Functionalize", "BackendSelect")  # fmt: skip
_IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: attributes of such a type cannot be set from Python
_KINDS = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
          types.ClassMethodDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType, types.MethodType,
          types.MethodWrapperType, types.ModuleType, staticmethod, classmethod, property)  # fmt: skip

_is = operator.is_
_getitems = operator.itemgetter
_code_of = operator.attrgetter("__code__")

_BASELINE: tuple | None = None


def _kept(value: object, *, in_class: bool) -> bool:
    """Whether ``value`` is code (a function, a class, a module, a descriptor), not data."""
    kind = type(value)
    if issubclass(kind, type) or kind in _KINDS:
        return True
    name = getattr(kind, "__name__", "")  # numpy ufuncs, torch's C functions, functools.partial and the like
    return kind.__module__ in ("numpy", "functools", "torch._C", "torch") and name in ("ufunc", "partial", "_ArrayFunctionDispatcher", "builtin_function_or_method") or (in_class and callable(value) and kind.__module__ == "builtins")


def _namespace(label: str, mapping, *, in_class: bool, skip: frozenset = frozenset()) -> tuple:
    keys = tuple(k for k, v in list(mapping.items()) if type(k) is str and k not in skip and _kept(v, in_class=in_class))
    values = _getitems(*keys)(mapping) if len(keys) > 1 else tuple(mapping[k] for k in keys)
    return (label, mapping, keys, values, len(mapping), frozenset(mapping) if in_class else None)


def _torch_state() -> tuple:
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    c = torch._C
    registrations = []
    for key in _KEYS:
        try:
            registrations.append(tuple(c._dispatch_get_registrations_for_dispatch_key(key)))
        except Exception:
            registrations.append(None)
    tables = []
    for op in _OPS:
        try:
            tables.append(c._dispatch_dump_table(op))
        except Exception:
            tables.append(None)
    return (
        c._len_torch_function_stack(),
        c._len_torch_dispatch_stack(),
        repr(c._dispatch_tls_local_include_set()),
        repr(c._dispatch_tls_local_exclude_set()),
        c._is_torch_function_enabled() if hasattr(c, "_is_torch_function_enabled") else None,
        tuple(registrations),
        tuple(tables),
    )


def _record(packages: tuple[str, ...]) -> tuple:
    roots = frozenset(ROOTS) | frozenset(packages)
    spaces, classes, seen = [], [], set()
    modules = []
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] not in roots or not isinstance(module, types.ModuleType) or name.startswith(_SKIPPED) and (name + ".").startswith(tuple(p + "." for p in _SKIPPED)):
            continue
        modules.append((name, module, type(module)))
        skip = _VOLATILE_BUILTINS if name == "builtins" else frozenset()
        space = _namespace(name, module.__dict__, in_class=False, skip=skip)
        spaces.append(space)
        for value in space[3]:
            if isinstance(value, type) and id(value) not in seen and not value.__flags__ & _IMMUTABLE:
                seen.add(id(value))
                classes.append(value)
    for cls in classes:
        spaces.append(_namespace(f"{cls.__module__}.{cls.__qualname__}", cls.__dict__, in_class=True))
    functions = tuple(v for space in spaces for v in space[3] if type(v) is types.FunctionType)
    class_shapes = tuple((cls, type(cls), cls.__mro__) for cls in classes)
    return (
        tuple(modules),
        tuple(spaces),
        functions,
        tuple(map(_code_of, functions)),
        class_shapes,
        sys.gettrace(),
        sys.getprofile(),
        _torch_state(),
    )


def _own_wrapper(new: object, old: object, label: str) -> bool:
    """Whether ``new`` is a wrapper of ``old`` that the library itself made, from its own files
    (torch wraps an optimizer's ``step`` the first time one is created, for its profiler)."""
    if type(new) is not types.FunctionType:
        return False
    package = sys.modules.get(label.partition(".")[0])
    folder = getattr(package, "__file__", None)
    if not folder:
        return False
    folder = os.path.dirname(folder) + os.sep
    wrapped = new
    for _ in range(5):
        if type(wrapped) is not types.FunctionType or not wrapped.__code__.co_filename.startswith(folder):
            return False
        wrapped = wrapped.__dict__.get("__wrapped__")
        if wrapped is old:
            return True
    return False


def baseline(packages: tuple[str, ...] | list[str] = ()) -> tuple:
    """The snapshot, taken on the first call (later calls return it unchanged)."""
    global _BASELINE
    if _BASELINE is None:
        _BASELINE = _record(tuple(packages))
    return _BASELINE


def modes_active() -> str | None:
    """What intercepts torch calls right now (a mode pushed and left active), or None. Cheap."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch._C._len_torch_function_stack():
        return "a __torch_function__ mode is active"
    if torch._C._len_torch_dispatch_stack():
        return "a __torch_dispatch__ mode is active"
    return None


def changes(limit: int = 5) -> list[str]:
    """What differs from the baseline now (empty if nothing): replaced, added or deleted code."""
    if _BASELINE is None:
        return []
    modules, spaces, functions, codes, class_shapes, trace, profile, torch_state = _BASELINE
    found: list[str] = []
    for name, module, kind in modules:
        if sys.modules.get(name) is not module:
            found.append(f"sys.modules[{name!r}] was replaced")
        elif type(module) is not kind:
            found.append(f"module {name} had its class changed")
    for label, mapping, keys, values, size, key_set in spaces:
        try:
            now = _getitems(*keys)(mapping) if len(keys) > 1 else tuple(mapping[k] for k in keys)
        except KeyError:
            found += [f"{label}.{k} was deleted" for k in keys if k not in mapping][:1]
            continue
        if not all(map(_is, now, values)):
            found += [f"{label}.{k} was replaced" for k, a, b in zip(keys, now, values) if a is not b and not _own_wrapper(a, b, label)]
        if key_set is not None and len(mapping) != size:
            added = [k for k in set(mapping) - key_set if type(k) is str and _kept(mapping[k], in_class=True)]
            found += [f"{label}.{k} was added" for k in sorted(added)]
        if len(found) >= limit:
            return found[:limit]
    if not all(map(_is, map(_code_of, functions), codes)):
        found += [f"the code of {f.__module__}.{f.__qualname__} was replaced" for f, c in zip(functions, codes) if f.__code__ is not c]
    for cls, meta, mro in class_shapes:
        if type(cls) is not meta or cls.__mro__ is not mro:
            found.append(f"the class {cls.__module__}.{cls.__qualname__} had its class or bases changed")
    if sys.gettrace() is not trace or sys.getprofile() is not profile:
        found.append("a trace or profile function was installed")
    now_state = _torch_state()
    if now_state != torch_state:
        labels = ("__torch_function__ modes", "__torch_dispatch__ modes", "thread-local dispatch keys (included)",
                  "thread-local dispatch keys (excluded)", "torch function handling", "registered kernels", "operator kernels")  # fmt: skip
        found += [f"torch's {label} changed" for label, a, b in zip(labels, now_state, torch_state) if a != b]
    return found[:limit]


def digest() -> str:
    """A name for the baseline object and its contents (ids: valid within this process only)."""
    if _BASELINE is None:
        return "none"
    modules, spaces, functions, codes, *_ = _BASELINE
    parts = (id(_BASELINE), id(modules), id(spaces), id(functions), id(codes), len(spaces), len(functions), [id(s[3]) for s in spaces])
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
