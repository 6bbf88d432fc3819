"""Grade submitted notebooks: ``mi-course grade SUBMISSIONS_DIR``.

Each submission is rebuilt from the course's own student copy (``notebooks/``): every cell
except the exercise cells comes from the course, matched by cell id; the exercise cells'
code comes from the student. Before and after each check cell the grader inserts a cell that
runs :func:`mi_course.integrity.verify`. The rebuilt notebook runs under nbval in its own
process and temporary folder, with a cell timeout, a notebook timeout and a memory cap.
An exercise earns its points when its check cell passed, printed its success line, and no
tampering was found at or before it. See ``docs/grading.md``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from mi_course import integrity
from mi_course.build import KEY, Exercise, repo_root

ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")  # JUnit XML writes the escape character as "#x1B"
HINT = re.compile(r"Hint: (.*)")
# The line mi_course.checks.core prints under a hint: the exercise and the mistake's stable id.
MISTAKE = re.compile(r"\(check (\S+), mistake id ([^\s)]+)\)")
VERIFY_ROLE = "verify"
BASELINE_ROLE = "baseline"
# Text in a failed cell's report -> what happened (a status, once per kind).
EVENTS = {
    "Failed to interrupt kernel": "kernel died or stopped responding",
    "Timeout of": "timeout: ran past the cell time limit",
    "Kernel dead": "kernel was dead",
    "SystemExit": "sys.exit() called",
    "MemoryError": "out of memory",
}

# Loaded by pytest from the submission's folder: records each cell's id and printed text in
# the JUnit report, and the kernel's process id so that the grader can kill its group.
CONFTEST = '''
import os

import pytest


def pytest_runtest_call(item):
    pid = getattr(getattr(item.parent.kernel.km, "provisioner", None), "pid", None)
    if pid and not os.path.exists(os.environ["MI_COURSE_KERNEL_PID"]):
        with open(os.environ["MI_COURSE_KERNEL_PID"], "w") as f:
            f.write(str(pid))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "call" and hasattr(item, "cell"):
        streams = [o.get("text", "") for o in item.test_outputs or [] if o.get("output_type") == "stream"]
        item.user_properties.append(("cell_id", item.cell.get("id", "")))
        item.user_properties.append(("stdout", "".join(streams)[-4000:]))
    yield
'''

# Sets the resource limits, then becomes pytest (a preexec_fn is unsafe with --jobs threads).
LAUNCHER = (
    "import os, resource, sys\n"
    "memory, size = int(sys.argv[1]), int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (memory, memory))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'pytest', *sys.argv[3:]])\n"
)
FILE_SIZE_LIMIT = 1 << 30


class GradeError(Exception):
    """A submission or a course that cannot be graded; the message says why."""


@dataclass
class CourseNotebook:
    name: str
    nb: nbformat.NotebookNode
    exercises: list[Exercise]
    imported: set[str]  # names the course cells bind by import
    protected: set[str]  # names the check cells use and exercise code must not rebind
    bindings: dict[str, tuple[str, str | None]]  # protected imported names -> (module, attribute)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # every name the course cells import


@dataclass
class Course:
    root: Path
    notebooks: dict[str, CourseNotebook]
    packages: dict[str, Path]  # watched top-level modules -> package folder or module file
    digests: dict[str, str]
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)  # exercise -> the course's own implementations


@dataclass
class Options:
    timeout_cell: float = 600
    timeout_notebook: float = 3600
    memory_mb: int = 4096
    secret: str | None = None  # the course secret of the capstone's mystery models (notebook 09)


@dataclass(frozen=True)
class Outcome:
    """How one exercise of one submission ended, for the class report (``mi_course.report``).

    ``kind``: ``passed``; ``not-attempted`` (the stub left in); ``mistake`` (a hint the check
    gave, ``mistake`` its stable id); ``generic`` (a wrong answer no typical mistake explains);
    ``no-result`` (the check did not run, crashed, or its points were withheld; ``hint`` says why).
    """

    kind: str
    mistake: str = ""
    hint: str = ""


@dataclass
class Result:
    student: str
    path: Path
    notebook: str | None = None
    points: dict[str, float] = field(default_factory=dict)  # whole points, but partial for the capstone
    status: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    log: str = ""
    stubs: set[str] = field(default_factory=set)  # exercises whose cell is the course's stub, or missing
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def _course_notebook(name: str, nb: nbformat.NotebookNode) -> CourseNotebook:
    """A course's student copy: its exercises (from the cell metadata) and the names its checks rely on."""
    checks: dict[str, dict] = {}
    cells: dict[str, str] = {}
    course_code, check_code, exercise_code = [], [], []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get(KEY, {})
        if meta.get("role") == "check":
            checks[meta["exercise"]] = {"cell": cell.id, "points": meta["points"]}
            check_code.append(cell.source)
        elif meta.get("exercise"):
            cells[meta["exercise"]] = cell.id
            exercise_code.append(cell.source)
        if cell.cell_type == "code" and meta.get("role") != "check" and not meta.get("exercise"):
            course_code.append(cell.source)
    missing = set(checks) ^ set(cells)
    if missing:
        raise GradeError(f"course notebook {name}: exercises {sorted(missing)} lack an exercise or a check cell")
    exercises = [Exercise(ex, c["points"], cells[ex], c["cell"]) for ex, c in checks.items()]
    course_tree, check_tree, exercise_tree = (_parse(cells, name) for cells in (course_code, check_code, exercise_code))
    # Names the check cells take from the notebook, and `globals`, which the verifier cells call.
    protected = (integrity.free_names(check_tree) | {"globals"}) - integrity.bound_names(exercise_tree)
    imports = integrity.import_bindings(course_tree.body)
    bindings = {k: v for k, v in imports.items() if k in protected}
    return CourseNotebook(name, nb, exercises, integrity.imported_names(course_tree), protected, bindings, imports)


def _parse(cells: list[str], name: str) -> ast.Module:
    """The code cells as one Python module (IPython syntax translated cell by cell)."""
    try:
        return ast.parse("\n".join(integrity.python_source(c) for c in cells))
    except SyntaxError as err:
        raise GradeError(f"course notebook {name} does not parse: {err}") from None


def _packages(root: Path) -> dict[str, Path]:
    """The course root's top-level modules and packages (the kernel imports these first), and mi_course."""
    import mi_course

    packages = {p.stem: p.resolve() for p in sorted(root.iterdir()) if p.suffix == ".py" or (p / "__init__.py").exists()}
    packages.setdefault("mi_course", Path(mi_course.__file__).resolve().parent)
    return packages


def load_course(root: Path | None = None) -> Course:
    """The course's student notebooks (``<root>/notebooks``) and the packages its checks use."""
    root = (root or repo_root()).resolve()
    paths = sorted((root / "notebooks").glob("*.ipynb"))
    if not paths:
        raise GradeError(f"no course notebooks in {root / 'notebooks'} (run `mi-course build`, or pass --course)")
    notebooks = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        name = nb.metadata.get(KEY, {}).get("notebook", path.stem)
        notebooks[name] = _course_notebook(name, nb)
    packages = _packages(root)
    return Course(root, notebooks, packages, integrity.file_digests(packages), _references(packages["mi_course"]))


def _references(package: Path) -> dict[str, tuple[str, ...]]:
    """Each exercise's reference implementations, from the ``REFERENCES`` literal of the check modules (read, not imported)."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted((package / "checks").glob("nb*.py")):
        for node in ast.parse(path.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Name) and target.id == "REFERENCES" and node.value is not None:
                found.update({k: tuple(v) for k, v in ast.literal_eval(node.value).items()})
    return found


def find_submissions(folder: Path) -> tuple[list[tuple[str, Path]], list[Result]]:
    """``(student, path)`` for every notebook under ``folder``, and a result for each empty student folder.

    A notebook directly in ``folder`` is the student named by its file stem; a notebook in a
    subfolder belongs to the student named by the top-level subfolder.
    """
    found: list[tuple[str, Path]] = []
    empty: list[Result] = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" not in rel.parts:
            found.append((rel.parts[0] if len(rel.parts) > 1 else path.stem, path))
    students = {s for s, _ in found}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in students:
            empty.append(Result(sub.name, sub, status=[f"no submission: no .ipynb file in {sub.name}/"]))
    return found, empty


def read_submission(path: Path) -> nbformat.NotebookNode:
    text = path.read_bytes()
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GradeError(f"not a notebook: {path.name} is not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise GradeError(f"not a notebook: {path.name} is JSON without a list of cells")
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as err:
        raise GradeError(f"not a notebook: {path.name} cannot be read by nbformat ({err})") from None


def identify(nb: nbformat.NotebookNode, course: Course) -> CourseNotebook:
    """The course notebook a submission is: from its metadata, else from its cell ids."""
    meta = nb.metadata.get(KEY)
    name = meta.get("notebook") if isinstance(meta, dict) else None
    if name in course.notebooks:
        return course.notebooks[name]
    ids = {cell.get("id") for cell in nb.cells}
    overlap = {n: len(ids & {c.id for c in cnb.nb.cells}) for n, cnb in course.notebooks.items()}
    best = max(overlap, key=overlap.get)
    if overlap[best] == 0:
        said = f"its metadata names {name!r}, which this course does not have" if name else "it has no mi_course metadata"
        raise GradeError(f"not a notebook of this course: {said} and none of its cell ids are the course's")
    return course.notebooks[best]


def _stored_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def rebuild(nb: nbformat.NotebookNode, cnb: CourseNotebook, course: Course, result: Result) -> tuple[nbformat.NotebookNode, str | None]:
    """The notebook to run (the course's cells, the student's exercise code, a verifier before
    and after each check) and the first exercise whose code the static scan flagged (or None).

    Adds to ``result.flags`` and ``result.feedback`` what the student changed or left out.
    """
    code = [c for c in nb.cells if c.cell_type == "code"]
    by_id = {c.get("id"): c for c in code}
    by_exercise = {c.metadata.get(KEY, {}).get("exercise"): c for c in code if c.metadata.get(KEY, {}).get("role") != "check"}
    exercise_of = {e.exercise_cell: e for e in cnb.exercises}
    check_of = {e.check_cell: e for e in cnb.exercises}
    out = nbformat.v4.new_notebook(metadata=copy.deepcopy(cnb.nb.metadata))
    tampered_from = None
    for cell in cnb.nb.cells:
        new = copy.deepcopy(cell)
        if cell.cell_type == "code":
            new.outputs, new.execution_count = [], None
        if cell.id in exercise_of and not any(c.metadata.get(KEY, {}).get("role") == BASELINE_ROLE for c in out.cells):
            out.cells.append(_baseline_cell(course))  # before any of the student's code runs
        if cell.metadata.get(KEY, {}).get("role") == STUDENT_ID_ROLE:
            # The course's cell, run with the id the student set (as a literal, whatever they wrote).
            from mi_course.checks.nb09 import STUDENT_ID_LINE, submitted_student_id

            sid = submitted_student_id(c.source for c in code)
            if sid is not None:
                new.source = STUDENT_ID_LINE.sub(lambda _: f"STUDENT_ID = {sid!r}", new.source, count=1)
        if cell.id in exercise_of:
            ex = exercise_of[cell.id]
            theirs = by_id.get(cell.id) or by_exercise.get(ex.id)
            if theirs is None:
                result.feedback.append(f"Exercise {ex.id}: your notebook has no exercise cell for it; graded as not attempted.")
            else:
                new.source = theirs.source
            if theirs is None or _code_lines(theirs.source) == _code_lines(cell.source):
                result.stubs.add(ex.id)
            findings = integrity.scan(new.source, cnb.imported, cnb.protected, cnb.bindings)
            if findings:
                result.flags.append(f"tampering in exercise {ex.id}: " + "; ".join(findings))
                tampered_from = tampered_from or ex.id
            uses = integrity.reference_uses(new.source, course.references.get(ex.id, ()), cnb.imports)
            if uses:  # not tampering, and the check still decides the points: for the instructor to look at
                result.flags.append(f"to review: exercise {ex.id} calls the course's reference implementation: " + "; ".join(uses))
        if cell.id in check_of:
            ex = check_of[cell.id]
            theirs = by_id.get(cell.id)
            if theirs is None:
                result.flags.append(f"check cell of exercise {ex.id} was deleted (restored)")
            elif theirs.source != cell.source:
                result.flags.append(f"check cell of exercise {ex.id} was edited (restored)")
            if theirs is not None and f"Exercise {ex.id} passed" in _stored_text(theirs):
                new.metadata.setdefault(KEY, {})["claimed"] = True
            out.cells += [_verify_cell(ex.id, "before", len(out.cells), cnb, course), new, _verify_cell(ex.id, "after", len(out.cells) + 1, cnb, course)]
        else:
            out.cells.append(new)
    return out, tampered_from


def _code_lines(source: str) -> list[str]:
    """The non-blank lines of a cell, without trailing spaces (to tell a stub left in from an attempt)."""
    return [line.rstrip() for line in source.splitlines() if line.strip()]


def _baseline_cell(course: Course) -> nbformat.NotebookNode:
    """A cell that records what the checks rely on (torch, numpy, builtins, the course), before any student code runs."""
    source = (
        "# mi-course grader: what the checks rely on, recorded before the first exercise\n"
        f"import {integrity.ENVIRONMENT_MODULE} as _mi_env\n"
        f"_mi_env.baseline({sorted(course.packages)!r})\n"
        f"print({integrity.ENVIRONMENT_LINE!r} + _mi_env.digest())\n"
        "del _mi_env"
    )
    cell = nbformat.v4.new_code_cell(source, metadata={KEY: {"role": BASELINE_ROLE}})
    cell.id = "mi-course-baseline"
    return cell


def _environment_digest(stdout: str) -> str | None:
    found = [line[len(integrity.ENVIRONMENT_LINE):].strip() for line in stdout.splitlines() if line.startswith(integrity.ENVIRONMENT_LINE)]
    return found[-1] if found else None


def _verify_cell(exercise: str, when: str, n: int, cnb: CourseNotebook, course: Course) -> nbformat.NotebookNode:
    """A cell that runs :func:`mi_course.integrity.verify`, loaded afresh from its file."""
    source = (
        f"# mi-course grader: integrity check {when} exercise {exercise}\n"
        "import importlib.util as _mi_u\n"
        f"_mi_s = _mi_u.spec_from_file_location('_mi_course_integrity', {integrity.__file__!r})\n"
        "_mi_m = _mi_u.module_from_spec(_mi_s)\n"
        "_mi_s.loader.exec_module(_mi_m)\n"
        f"_mi_m.verify({course.digests!r}, {sorted(course.packages)!r}, {cnb.bindings!r}, globals())\n"
        "del _mi_u, _mi_s, _mi_m"
    )
    cell = nbformat.v4.new_code_cell(source, metadata={KEY: {"role": VERIFY_ROLE, "exercise": exercise, "when": when}})
    cell.id = f"mi-course-verify-{n}"
    return cell


@dataclass
class CellResult:
    outcome: str  # passed, failed, skipped (after a timeout), missing
    message: str = ""
    stdout: str = ""


def read_junit(path: Path) -> dict[str, CellResult]:
    """Per cell id (recorded by CONFTEST): outcome, failure text, printed text. Cells that never ran are absent."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if "cell_id" not in props:
            continue
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = ANSI.sub("", (node.get("message") or "") + "\n" + (node.text or ""))
                break
        results[props["cell_id"]] = CellResult(outcome, message, props.get("stdout", ""))
    return results


def _kill_group(pid: int) -> None:
    """Kill a process group; never ours, nor init's (the kernel's pid file is writable by the notebook)."""
    if pid <= 1 or pid == os.getpgid(0):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_notebook(
    nb: nbformat.NotebookNode, course: Course, options: Options, prepare: Callable[[Path], None] | None = None
) -> tuple[dict[str, CellResult] | None, str, bool]:
    """Run under nbval in a fresh folder; returns the cell results (None if none), pytest's output, whether it timed out.

    ``prepare(work)`` may put files next to the notebook first (the capstone's model file)."""
    with tempfile.TemporaryDirectory(prefix="mi-course-grade-") as tmp:
        # pytest runs in `results`, the kernel in `work`: a notebook that deletes its own
        # folder does not take the report with it.
        results = Path(tmp)
        work = results / "work"
        work.mkdir()
        nbformat.write(nb, work / "submission.ipynb")
        if prepare is not None:
            prepare(work)
        (results / "conftest.py").write_text(CONFTEST)
        (results / "pytest.ini").write_text("[pytest]\n")
        startup = Path(os.environ.get("IPYTHONDIR", Path.home() / ".ipython")) / "profile_default" / "startup"
        ipython = results / "ipython" / "profile_default" / "startup"
        if startup.is_dir():
            shutil.copytree(startup, ipython)
        else:
            ipython.mkdir(parents=True)
        junit, pidfile = results / "junit.xml", results / "kernel.pid"
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(course.root), env.get("PYTHONPATH")])),
            IPYTHONDIR=str(results / "ipython"),
            JUPYTER_RUNTIME_DIR=str(results / "runtime"),
            MI_COURSE_KERNEL_PID=str(pidfile),
            PYTHONDONTWRITEBYTECODE="1",
            MPLBACKEND="Agg",
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        )
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [
            sys.executable, "-c", LAUNCHER, str(options.memory_mb << 20), str(FILE_SIZE_LIMIT),
            "-q", "-p", "nbval.plugin", "-p", "no:cacheprovider", "-c", "pytest.ini", "--rootdir", str(results),
            "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={options.timeout_cell}",
            f"--junitxml={junit}", "-o", "junit_family=xunit1", "--durations=0", "work/submission.ipynb",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=results, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            output, _ = proc.communicate(timeout=options.timeout_notebook)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            output, _ = proc.communicate()
        finally:
            _kill_group(proc.pid)
            pid = pidfile.read_text().strip() if pidfile.exists() else ""
            if pid.isdigit():  # the kernel runs in its own session; end it and what it started
                _kill_group(int(pid))
        text = output.decode(errors="replace")
        try:
            cells = read_junit(junit) if junit.exists() else None
        except ET.ParseError:
            cells = None
    return cells, text, timed_out


def _last_line(message: str) -> str:
    lines = [l.strip() for l in message.splitlines() if l.strip() and not l.strip().startswith("^")]
    return lines[-1] if lines else "no message"


def grade_notebook(student: str, path: Path, course: Course, options: Options) -> Result:
    """Grade one submission; never raises (the result's status says what went wrong)."""
    result = Result(student, path)
    try:
        nb = read_submission(path)
        cnb = identify(nb, course)
        result.notebook = cnb.name
        result.points = {e.id: 0 for e in cnb.exercises}
        run, tampered_from = rebuild(nb, cnb, course, result)
        prepare = _capstone_model(run, options.secret) if cnb.name == CAPSTONE else None
        cells, result.log, timed_out = run_notebook(run, course, options, prepare)
        if timed_out:
            result.status.append(f"killed: the notebook ran longer than {options.timeout_notebook:g} s")
        if cells is None and not timed_out:
            result.status.append("no results: the run left no report (did the notebook delete the grader's files?)")
        if cells is None:
            result.feedback.append("Your notebook could not be graded; see the status above.")
        else:
            score(result, run, cnb, cells, tampered_from)
            if cnb.name == CAPSTONE:
                score_capstone(result, run, cnb, cells, options.secret)
    except GradeError as err:
        result.status.append(str(err))
    except Exception as err:  # a malformed submission must not stop the batch
        result.status.append(f"cannot grade {path.name}: {type(err).__name__}: {err}")
    if not result.status:
        result.status.append("ok")
    return result


def score(result: Result, run: nbformat.NotebookNode, cnb: CourseNotebook, cells: dict[str, CellResult], tampered_from: str | None) -> None:
    """Points, status, flags and feedback from the cell results of the rebuilt notebook ``run``.

    A check earns its points if it passed, printed its success line, and comes before the
    first tampering: the flagged exercise cell, or the check a failed verifier cell guards.
    """
    code = [c for c in run.cells if c.cell_type == "code"]
    results = [cells.get(c.id, CellResult("missing")) for c in code]
    exercise_of = {e.exercise_cell: e for e in cnb.exercises}
    check_of = {e.check_cell: e for e in cnb.exercises}
    first_tampered = len(code)
    baseline = None
    for n, (cell, res) in enumerate(zip(code, results)):
        meta = cell.metadata.get(KEY, {})
        if meta.get("role") == BASELINE_ROLE:
            baseline = _environment_digest(res.stdout) if res.outcome == "passed" else None
        if cell.id in exercise_of and exercise_of[cell.id].id == tampered_from:
            first_tampered = min(first_tampered, n)
        elif meta.get("role") == VERIFY_ROLE and res.outcome == "failed" and first_tampered == len(code):
            first_tampered = n if meta["when"] == "before" else n - 1  # the check cell it follows
            result.flags.append(f"tampering detected at run time {meta['when']} exercise {meta['exercise']}: {_last_line(res.message)}")
        elif meta.get("role") == VERIFY_ROLE and res.outcome == "passed" and first_tampered == len(code) and _environment_digest(res.stdout) != baseline:
            # The verifier compared the environment with a baseline that is not the one recorded before the
            # student's code ran (or printed nothing it should have): someone replaced the baseline.
            first_tampered = n if meta["when"] == "before" else n - 1
            result.flags.append(
                f"tampering detected at run time {meta['when']} exercise {meta['exercise']}: the record of torch, numpy and the "
                "builtins was replaced (its digest differs from the one taken before the first exercise)"
            )
    for n, (cell, res) in enumerate(zip(code, results)):
        meta = cell.metadata.get(KEY, {})
        where = f"exercise {meta.get('exercise')}" if meta.get("exercise") else f"cell {n}"
        event = next((e for marker, e in EVENTS.items() if marker in res.message), None) if res.outcome == "failed" else None
        if event and not any(s.startswith(event) for s in result.status):
            result.status.append(f"{event} in {where}")
        elif res.outcome == "failed" and not meta.get("exercise") and not any(s.startswith("course cell") for s in result.status):
            # The course's own cells should not fail: an environment problem, or the student's code broke their state.
            result.status.append(f"course cell {cell.id} failed: {_last_line(res.message)}")
        if cell.id in exercise_of and res.outcome == "failed":
            result.feedback.append(f"Exercise {meta['exercise']}: your exercise cell failed: {event or _last_line(res.message)}")
        if cell.id not in check_of:
            continue
        ex = check_of[cell.id]
        passed = res.outcome == "passed" and f"Exercise {ex.id} passed" in res.stdout
        if n >= first_tampered:
            result.feedback.append(f"Exercise {ex.id}: 0/{ex.points}, withheld: the grading code was tampered with at or before this exercise.")
            result.outcomes[ex.id] = Outcome("no-result", "withheld", "points withheld: tampering at or before this exercise")
        elif passed:
            result.points[ex.id] = ex.points
            result.feedback.append(f"Exercise {ex.id}: passed ({ex.points}/{ex.points}).")
            result.outcomes[ex.id] = Outcome("passed")
        else:
            hint = HINT.search(res.message)
            if res.outcome == "passed":
                why = "the check did not print its success line."
            elif res.outcome == "failed":
                why = hint[1].strip() if hint else f"the check raised: {_last_line(res.message)}"
            else:
                why = "the check did not run (an earlier cell timed out or the kernel died)."
            result.feedback.append(f"Exercise {ex.id}: 0/{ex.points}. {why}")
            result.outcomes[ex.id] = _outcome(ex.id, res, hint[1].strip() if hint and res.outcome == "failed" else None, event or why)
        if ex.id in result.stubs and result.outcomes[ex.id].kind != "passed":
            result.outcomes[ex.id] = Outcome("not-attempted", "no-answer", "the stub was left in")
        if meta.get("claimed") and not passed:
            result.flags.append(f"the submitted outputs claim exercise {ex.id} passed, but it failed when re-run")


CAPSTONE = "09_find_the_circuit"
STUDENT_ID_ROLE = "student-id"  # a course cell whose STUDENT_ID literal the grader takes from the submission


def _capstone_model(run: nbformat.NotebookNode, secret: str | None) -> Callable[[Path], None] | None:
    """With the course secret, the grader builds the student's model itself and puts its file next
    to the notebook, where ``mystery.for_student`` finds it: no model files to keep for grading."""
    from mi_course import mystery
    from mi_course.checks.nb09 import submitted_student_id

    sid = submitted_student_id(c.source for c in run.cells if c.cell_type == "code")
    if secret is None or sid is None or sid.strip().lower() == "self-study":
        return None

    def prepare(work: Path) -> None:
        model = mystery.build(mystery.student_key(secret, sid))
        mystery.save(model, mystery.model_file(work, sid), sid)

    return prepare


def score_capstone(result: Result, run: nbformat.NotebookNode, cnb: CourseNotebook, cells: dict[str, CellResult], secret: str | None) -> None:
    """Notebook 09: the circuit and the roles earn partial points, by their overlap with the truth
    of the model of the submission's own ``STUDENT_ID``. Scored here, outside the student's kernel
    (which never sees the secret), from the answers the check cells recorded when re-run."""
    from mi_course.checks import nb09

    sid = nb09.submitted_student_id(c.source for c in run.cells if c.cell_type == "code")
    if sid is None:
        result.status.append("no STUDENT_ID in the submission: the capstone cannot be scored")
        return
    if secret is None:
        result.flags.append(f"capstone scored against the open self-study model of {sid!r}: no course secret was given")
    elif sid.strip().lower() == "self-study":
        result.flags.append("STUDENT_ID was left as 'self-study': scored against the open practice model")
    stdout = {e.id: cells.get(e.check_cell, CellResult("missing")).stdout for e in cnb.exercises}
    for ex_id, got in nb09.score_submission(stdout, sid, secret).items():
        ex = next(e for e in cnb.exercises if e.id == ex_id)
        if result.outcomes.get(ex_id, Outcome("passed")).mistake == "withheld":
            continue
        points = round(got.fraction * ex.points, 1)
        result.points[ex_id] = points
        result.feedback = [f for f in result.feedback if not f.startswith(f"Exercise {ex_id}:")]
        result.feedback.append(f"Exercise {ex_id}: {points:g}/{ex.points}, scored against your model's truth: {got.feedback}")
        if got.fraction == 1.0:
            result.outcomes[ex_id] = Outcome("passed")
        elif ex_id not in result.stubs:
            result.outcomes[ex_id] = Outcome("mistake", "partial", got.feedback)


def _outcome(exercise: str, res: CellResult, hint: str | None, why: str) -> Outcome:
    """What a failed check said: its hint and the mistake id printed under it (else a digest of the hint)."""
    if hint is None:
        if res.outcome != "failed":
            reason = "no-success-line" if res.outcome == "passed" else "not-run"
        else:
            reason = "timeout" if why == EVENTS["Timeout of"] else "crash" if why in EVENTS.values() else "error"
        return Outcome("no-result", reason, why)
    marked = [m[2] for m in MISTAKE.finditer(res.message) if m[1] == exercise]
    if marked:
        mistake = marked[-1]
    else:  # a course whose checks predate mistake ids
        from mi_course.checks.core import mistake_id

        mistake = mistake_id(hint)
    if mistake == "no-answer" or hint.startswith("not implemented yet"):
        return Outcome("not-attempted", "no-answer", hint)
    return Outcome("generic" if mistake == "generic" else "mistake", mistake, hint)


def write_outputs(results: list[Result], course: Course, out: Path) -> Path:
    """``gradebook.csv`` (one row per student), ``feedback/<student>.md`` and ``logs/``."""
    names = sorted({r.notebook for r in results if r.notebook})
    exercises = [e for n in names for e in course.notebooks[n].exercises]
    maximum = sum(e.points for e in exercises)
    by_student: dict[str, list[Result]] = {}
    for r in results:
        by_student.setdefault(r.student, []).append(r)
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    gradebook = out / "gradebook.csv"
    with gradebook.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebooks", *[e.id for e in exercises], "total", "max", "status", "flags"])
        for student, rs in sorted(by_student.items()):
            points: dict[str, int] = {}
            seen: set[str] = set()
            status, flags, lines = [], [], [f"# Feedback for {student}", ""]
            for r in rs:
                label = r.notebook or r.path.name
                if r.notebook is not None and r.notebook in seen:
                    flags.append(f"{r.path.name}: a second submission of {r.notebook}, not counted")
                    continue
                seen.add(r.notebook)
                points.update(r.points)
                status += [f"{label}: {s}" if len(rs) > 1 else s for s in r.status]
                flags += r.flags
                got = sum(r.points.values())
                most = sum(e.points for e in course.notebooks[r.notebook].exercises) if r.notebook else 0
                lines += [f"## {label} ({r.path.name}): {got}/{most}", "", f"Status: {'; '.join(r.status)}", ""]
                lines += [f"- {line}" for line in r.feedback]
                lines += [f"- Flag: {flag}" for flag in r.flags] + [""]
                if r.log:
                    (out / "logs" / f"{student}__{r.path.stem}.txt").write_text(r.log)
            writer.writerow([
                student, " ".join(sorted(seen - {None})),
                *[points.get(e.id, "") for e in exercises],
                sum(points.values()), maximum, "; ".join(status), "; ".join(flags),
            ])  # fmt: skip
            (out / "feedback" / f"{student}.md").write_text("\n".join(lines))
    return gradebook


def grade(
    submissions: Path, out: Path, course: Course, options: Options, jobs: int = 1, progress: bool = True, report: bool = True
) -> list[Result]:
    """Grade every notebook under ``submissions``, ``jobs`` at a time, and write the outputs to ``out``
    (with ``report``, also the class report: ``mi_course.report``)."""
    from tqdm.auto import tqdm  # a widget in Jupyter, a text bar in a terminal

    found, results = find_submissions(submissions)
    if not found:
        raise GradeError(f"no .ipynb files under {submissions}")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(grade_notebook, student, path, course, options): path for student, path in found}
        for future in tqdm(as_completed(futures), total=len(futures), desc="grading", unit="nb", disable=not progress):
            results.append(future.result())
            if integrity.file_digests(course.packages) != course.digests:
                for pending in futures:
                    pending.cancel()
                raise GradeError(
                    f"the course's files changed on disk while grading (last finished: {futures[future]}); "
                    "no result of this run can be trusted: restore the files and grade in an isolated copy"
                )
    write_outputs(results, course, out)
    if report:
        from mi_course.report import write_report

        write_report(results, course, out)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mi-course grade",
        description="Re-run students' notebooks under nbval and write a gradebook and feedback per student (docs/grading.md).",
    )
    parser.add_argument("submissions", type=Path, help="folder of .ipynb files, or of one folder per student")
    parser.add_argument("--out", type=Path, default=Path("grades"), metavar="DIR", help="where gradebook.csv, feedback/, logs/ and the class report go (default: ./grades)")
    parser.add_argument("--timeout-cell", type=float, default=Options.timeout_cell, metavar="S", help="seconds per cell (default %(default)g)")
    parser.add_argument("--timeout-notebook", type=float, default=Options.timeout_notebook, metavar="S", help="seconds per notebook (default %(default)g)")
    parser.add_argument("--memory", type=int, default=Options.memory_mb, metavar="MB", help="address-space cap per submission (default %(default)d)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="submissions graded in parallel (default 1)")
    parser.add_argument("--secret-file", type=Path, default=None, metavar="FILE", help="the course secret of the capstone's mystery models (default: $MI_COURSE_SECRET)")
    parser.add_argument("--course", type=Path, default=None, metavar="DIR", help="course root holding notebooks/ (default: this repository)")
    args = parser.parse_args(argv)
    try:
        if not args.submissions.is_dir():
            raise GradeError(f"{args.submissions} is not a folder")
        course = load_course(args.course)
        secret = args.secret_file.read_text().strip() if args.secret_file else os.environ.get("MI_COURSE_SECRET") or None
        options = Options(args.timeout_cell, args.timeout_notebook, args.memory, secret)
        results = grade(args.submissions, args.out, course, options, args.jobs)
    except GradeError as err:
        print(f"mi-course grade: {err}", file=sys.stderr)
        return 2
    problems = [r for r in results if r.status != ["ok"] or r.flags]
    print(f"graded {len(results)} submissions ({len(problems)} with a status or flag to read): {args.out / 'gradebook.csv'}")
    print(f"class report: {args.out / 'class_report.html'} (and class_report.md, exercise_stats.csv, mistakes.csv)")
    return 0
