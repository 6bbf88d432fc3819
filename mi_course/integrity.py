"""Tamper detection for the grader: a static scan of submitted code and a runtime verifier.

The static scan (:func:`scan`) flags exercise code that reaches for the grading machinery:
assignments to module attributes, ``setattr``/``delattr``, ``sys.modules``, ``builtins``,
``importlib``, ``exec``/``eval``, IPython hooks, frame and code-object internals, and
rebinding the names the check cells call.

The runtime verifier (:func:`verify`) runs in the notebook's kernel right before and right
after each check cell, loaded afresh from this file (not the copy in ``sys.modules``). It checks
every loaded module of the watched packages against its source on disk, whose SHA-256 the
grader passes in: each function and class the source defines must still be there, compiled
from that source, with the module's own globals; each name the source imports must still
be the imported object. The check cells' imported names in the notebook are checked the
same way. This module uses only the standard library, so the kernel loads it quickly.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from pathlib import Path
from types import CodeType, FunctionType, ModuleType

# Names whose use in exercise code is a reason to flag it, with what they could do.
FORBIDDEN_NAMES = {
    "builtins": "edits builtins",
    "__builtins__": "edits builtins",
    "importlib": "reloads or swaps modules",
    "__import__": "imports modules by computed name",
    "exec": "runs code from a string",
    "eval": "runs code from a string",
    "compile": "compiles code from a string",
    "get_ipython": "reaches into the IPython kernel",
    "IPython": "reaches into the IPython kernel",
    "ipykernel": "reaches into the IPython kernel",
    "ctypes": "writes process memory",
    "gc": "finds objects through the garbage collector",
    "setattr": "sets attributes by name",
    "delattr": "deletes attributes by name",
}
SAFE_MAGICS = {"time", "timeit", "matplotlib"}  # allowed; the code they run is scanned like the cell's
FORBIDDEN_ATTRIBUTES = {
    "settrace": "installs a tracer",
    "setprofile": "installs a profiler",
    "_getframe": "reads other frames",
    "f_globals": "reads other frames' globals",
    "f_locals": "reads other frames' locals",
    "f_back": "reads other frames",
    "__code__": "edits a function's code",
    "__globals__": "reads a function's globals",
    "__closure__": "edits a function's closure",
    "__defaults__": "edits a function's defaults",
    "__kwdefaults__": "edits a function's defaults",
    "__dict__": "edits an object's namespace",
    "__setattr__": "sets attributes by name",
    "__delattr__": "deletes attributes by name",
    "__subclasses__": "walks the class hierarchy",
}


class TamperError(AssertionError):
    """The grading machinery was changed by the submission."""



def python_source(source: str) -> str:
    """A cell's code with IPython syntax (``%magic``, ``!cmd``) turned into the Python it runs."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _safe_magic(node: ast.AST) -> list[str] | None:
    """For ``get_ipython().run_line_magic/run_cell_magic`` of a safe magic: the code it runs; else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    owner, args = node.func.value, node.args
    if not (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "get_ipython"):
        return None
    if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args) or not args or args[0].value not in SAFE_MAGICS:
        return None
    if node.func.attr in ("run_line_magic", "run_cell_magic"):
        return [a.value for a in args[1:]]
    return None


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node


def imported_names(tree: ast.AST) -> set[str]:
    """Names bound by ``import`` statements anywhere in ``tree``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
    return names


def bound_names(tree: ast.AST) -> set[str]:
    """Global names a piece of code binds: top-level assignments, defs, imports, loops, and ``global``."""
    names: set[str] = set()
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, scopes):  # local names stay local; only `global` escapes
            names.update(n for sub in ast.walk(node) if isinstance(sub, ast.Global) for n in sub.names)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def free_names(tree: ast.AST) -> set[str]:
    """Names a piece of code reads but never assigns anywhere in itself: what it takes from outside."""
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name)]
    stored = {n.id for n in names if not isinstance(n.ctx, ast.Load)}
    return {n.id for n in names if isinstance(n.ctx, ast.Load)} - stored


def scan(source: str, modules: set[str], protected: set[str], bindings: dict[str, tuple[str, str | None]]) -> list[str]:
    """Findings in one exercise cell's code, one line each; empty when nothing looks like tampering.

    ``modules``: names the notebook binds to imported modules or objects (the cell's own
    imports are added). ``protected``: names the check cells use that the exercise must not
    rebind, except by importing again what ``bindings`` (:func:`import_bindings` of the
    course's cells) says the course imported.
    """
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []  # it cannot run either, so it cannot tamper
    modules = modules | imported_names(tree)
    found: list[str] = []
    allowed: set[int] = set()  # the get_ipython() calls of safe magics
    for node in ast.walk(tree):
        code = _safe_magic(node)
        if code is not None:
            allowed.add(id(node.func.value.func))
            found += [f for c in code for f in scan(c, modules, protected, bindings)]
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, (ast.Attribute, ast.Subscript)):
                    root = _root(sub)
                    if isinstance(root, ast.Name) and root.id in modules:
                        found.append(f"line {node.lineno}: assigns to {ast.unparse(sub)}, part of an imported module")
                        break
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES and id(node) not in allowed:
            found.append(f"line {node.lineno}: uses {node.id} ({FORBIDDEN_NAMES[node.id]})")
        elif isinstance(node, ast.Attribute) and node.attr == "modules" and ast.unparse(node.value) == "sys":
            found.append(f"line {node.lineno}: uses sys.modules (swaps modules)")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"line {node.lineno}: uses .{node.attr} ({FORBIDDEN_ATTRIBUTES[node.attr]})")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                top = mod.split(".")[0]
                if top in FORBIDDEN_NAMES or mod == "sys" and isinstance(node, ast.ImportFrom):
                    found.append(f"line {node.lineno}: imports {mod} ({FORBIDDEN_NAMES.get(top, 'reaches into sys')})")
    imports = import_bindings(tree.body)
    others = bound_names(ast.Module([n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))], []))
    for name in sorted(bound_names(tree) & protected):
        if name in others or name not in bindings or imports.get(name) != bindings[name]:
            found.append(f"redefines {name!r}, which the check cells use")
    return list(dict.fromkeys(found))


def reference_uses(source: str, references: tuple[str, ...] | list[str], bindings: dict[str, tuple[str, str | None]]) -> list[str]:
    """The course's reference implementations (qualified names, ``"mi_course.patching.ablate_head_hook"``)
    that one exercise cell's code uses, found statically: through the notebook's imports
    (``bindings``: :func:`import_bindings` of the course cells) or the cell's own, by attribute
    chains (``patching.ablate_head_hook``, ``mi_course.patching.ablate_head_hook``), star imports,
    and methods called on a parameter annotated with the class (``def f(sae: sae.SAE): sae.encode(x)``).
    Not tampering: a finding for the instructor to review.
    """
    if not references:
        return []
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []
    own = import_bindings([n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))])
    names = {**bindings, **own}
    local = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    local |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.posonlyargs + n.args + n.kwonlyargs}
    local -= set(own)
    wanted = set(references)
    stars = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) and n.module}

    def qualified(node: ast.AST, annotation: bool = False) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id in local and node.id not in typed and not annotation:
            return None
        if node.id in typed and not annotation:
            return ".".join([typed[node.id], *reversed(parts)])
        if node.id in names:
            module, attr = names[node.id]
            return ".".join([module] + ([attr] if attr else []) + list(reversed(parts)))
        for module in stars:
            if f"{module}.{node.id}" in wanted:
                return ".".join([module, node.id, *reversed(parts)])
        return None

    typed: dict[str, str] = {}  # parameters annotated with a class of the course
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotation = qualified(node.annotation, annotation=True)
            if annotation and any(r.startswith(annotation + ".") for r in wanted):
                typed[node.arg] = annotation
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
            name = qualified(node)
            if name in wanted:
                found.append(f"line {node.lineno}: uses {name}, the course's own implementation of this exercise")
    return list(dict.fromkeys(found))


# ----- runtime verification -------------------------------------------------------------


def code_hash(code: CodeType) -> str:
    """A hash of a code object and the code objects nested in it, stable across processes."""
    h = hashlib.sha256()

    def feed(c: CodeType) -> None:
        head = (c.co_name, getattr(c, "co_qualname", c.co_name), c.co_argcount, c.co_posonlyargcount,
                c.co_kwonlyargcount, c.co_flags, c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars)
        h.update(repr(head).encode())
        h.update(c.co_code)
        for const in c.co_consts:
            if isinstance(const, CodeType):
                feed(const)
            elif isinstance(const, frozenset):  # iteration order depends on the hash seed
                h.update(repr(sorted(map(repr, const))).encode())
            else:
                h.update(repr(const).encode())

    feed(code)
    return h.hexdigest()


def file_digests(packages: dict[str, Path]) -> dict[str, str]:
    """SHA-256 of every ``.py`` file of the watched packages (name -> package dir or module file)."""
    digests = {}
    for path in packages.values():
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digests[str(file.resolve())] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def _compiled(path: str, digests: dict[str, str], cache: dict) -> tuple[ast.Module, dict]:
    """The source's syntax tree and its code objects' hashes by (first line, qualified name)."""
    path = str(Path(path).resolve())
    if path not in cache:
        if path not in digests:
            raise TamperError(f"{path} is not a file of the course")
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != digests[path]:
            raise TamperError(f"{path} was modified on disk")
        hashes: dict[tuple[int, str], str] = {}
        stack = [compile(data, path, "exec", dont_inherit=True)]
        while stack:
            code = stack.pop()
            hashes[code.co_firstlineno, getattr(code, "co_qualname", code.co_name)] = code_hash(code)
            stack.extend(c for c in code.co_consts if isinstance(c, CodeType))
        cache[path] = (ast.parse(data, path), hashes)
    return cache[path]


def _check_function(fn: object, qualname: str, where: str, digests: dict[str, str], cache: dict) -> None:
    """``fn`` must be the function ``qualname`` compiled from a course file, with its module's globals."""
    if isinstance(fn, functools.cached_property):
        fn = fn.func
    while hasattr(fn, "__wrapped__"):  # functools.wraps, lru_cache, staticmethod
        fn = fn.__wrapped__
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    if not isinstance(fn, FunctionType):
        raise TamperError(f"{where} is not the course's function any more")
    code = fn.__code__
    key = (code.co_firstlineno, getattr(code, "co_qualname", code.co_name))
    if not hasattr(code, "co_qualname"):  # Python 3.10
        qualname = qualname.rpartition(".")[2]
    if str(Path(code.co_filename).resolve()) not in digests:
        raise TamperError(f"{where} was replaced by code from {code.co_filename}")
    _, hashes = _compiled(code.co_filename, digests, cache)
    if key[1] != qualname or hashes.get(key) != code_hash(code):
        raise TamperError(f"{where} was replaced or its code changed")
    module = sys.modules.get(fn.__module__)
    if module is None or fn.__globals__ is not vars(module):
        raise TamperError(f"{where} runs with someone else's globals")


def _expected_import(module: str, attr: str | None) -> object:
    """What an import statement bound, looked up now; ``None`` when the module is not loaded."""
    if attr is None:
        return sys.modules.get(module)
    mod = sys.modules.get(module)
    found = getattr(mod, attr, None) if mod is not None else None
    return found if found is not None else sys.modules.get(f"{module}.{attr}")


def import_bindings(body: list[ast.stmt], package: str = "") -> dict[str, tuple[str, str | None]]:
    """Top-level ``import`` statements: bound name -> (module, attribute or None)."""
    bindings: dict[str, tuple[str, str | None]] = {}
    for node in body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = (alias.name, None)
                else:
                    bindings[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                if alias.name != "*":
                    bindings[alias.asname or alias.name] = (base, alias.name)
    return bindings


def _check_bindings(namespace: dict, bindings: dict[str, tuple[str, str | None]], where: str, packages: list[str]) -> None:
    """Imported names must still be what they were imported as: modules, and objects from watched packages.

    (Objects imported from other packages are not compared: some rebuild them on each access.)
    """
    for name, (module, attr) in bindings.items():
        if attr is not None and module.split(".")[0] not in packages:
            continue
        expected = _expected_import(module, attr)
        if expected is not None and name in namespace and namespace[name] is not expected:
            target = module if attr is None else f"{module}.{attr}"
            raise TamperError(f"{where}{name} is no longer {target}")


def _check_module(name: str, module: object, digests: dict[str, str], packages: list[str], cache: dict) -> None:
    if not isinstance(module, ModuleType):
        raise TamperError(f"sys.modules[{name!r}] is not a module")
    path = getattr(module, "__file__", None)
    if path is None:  # a namespace package: nothing to run
        if any(isinstance(v, (FunctionType, type)) for v in vars(module).values()):
            raise TamperError(f"module {name} has no source file but defines functions")
        return
    tree, _ = _compiled(path, digests, cache)
    namespace = vars(module)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    _check_bindings(namespace, import_bindings(tree.body, package), f"{name}.", packages)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _check_function(namespace.get(node.name), node.name, f"{name}.{node.name}", digests, cache)
        elif isinstance(node, ast.ClassDef):
            cls = namespace.get(node.name)
            if not isinstance(cls, type) or cls.__module__ != name or cls.__qualname__ != node.name:
                raise TamperError(f"{name}.{node.name} is not the course's class any more")
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    attr = vars(cls).get(item.name)
                    if isinstance(attr, property):
                        attr = attr.fget
                    qualname = f"{node.name}.{item.name}"
                    _check_function(attr, qualname, f"{name}.{qualname}", digests, cache)


def verify(digests: dict[str, str], packages: list[str], bindings: dict, namespace: dict) -> None:
    """Raise :class:`TamperError` if a watched module or an imported name of the notebook changed.

    ``digests``: :func:`file_digests` of the watched packages, computed by the grader.
    ``bindings``: the notebook's imported names that its check cells use
    (:func:`import_bindings` of the course cells).
    """
    cache: dict = {}
    _check_bindings(namespace, {k: tuple(v) for k, v in bindings.items()}, "", packages)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in packages:
            _check_module(name, module, digests, packages, cache)
    check_environment()


ENVIRONMENT_MODULE = "mi_course.checks.environment"
ENVIRONMENT_LINE = "mi-course environment: "


def check_environment() -> None:
    """Torch, numpy, the builtins and the course's own namespaces must be as the baseline recorded
    them (:mod:`mi_course.checks.environment`, whose code :func:`verify` has just checked).

    Prints the baseline's digest, which the grader compares, outside the kernel, with the one the
    baseline cell printed before any student code ran: a baseline replaced to hide a change shows.
    """
    env = sys.modules.get(ENVIRONMENT_MODULE)
    if env is None:
        print(f"{ENVIRONMENT_LINE}none")
        return
    found = env.changes()
    if found:
        raise TamperError("the environment the checks rely on was changed: " + "; ".join(found))
    print(f"{ENVIRONMENT_LINE}{env.digest()}")
