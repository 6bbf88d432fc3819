"""`mi-course grade` on a tiny fixture course (tests/fixtures/grading): marks, tampering, bad input.

Most cases run in one batch (two at a time) so the kernels start once each; the fixture
course imports nothing heavier than mi_course.checks.core.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import types
from pathlib import Path

import nbformat
import pytest

from mi_course import grade, integrity
from mi_course.build import student_notebook

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "grading"))
from grading_fixture import HERE as FIXTURE, ROOT, SOLUTION, fixture_course, real_course  # noqa: E402

SOLVED = {
    "ex1": "def add(a, b):\n    return a + b",
    "ex2": "def scale(xs, k):\n    return [x * k for x in xs]",
    "ex3": "answer = 42",
}
WRONG_SCALE = "def scale(xs, k):\n    return xs * 0  # the right shape, the wrong values"
# Makes torch's comparisons say "equal" by routes the static scan does not name: a module's
# namespace through vars(), a class attribute through type(), a numpy function.
LYING_COMPARISONS = """
import numpy, torch
ops = vars(torch)
for name in ("allclose", "equal", "isclose"):
    ops[name] = lambda *args, **kwargs: True
vars(numpy)["allclose"] = vars(numpy)["array_equal"] = lambda *args, **kwargs: True
tensor_type = type(torch.zeros(1))
tensor_type.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)
"""


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> grade.Course:
    return grade.load_course(fixture_course(tmp_path_factory.mktemp("course")))


def stub() -> nbformat.NotebookNode:
    """The untouched student copy."""
    return student_notebook(nbformat.read(SOLUTION, as_version=4), "99_fixture")


def submission(**sources: str | None) -> nbformat.NotebookNode:
    """The student copy with cells replaced by id (``None`` deletes the cell)."""
    nb = stub()
    for cell_id, source in sources.items():
        cell = next(c for c in nb.cells if c.id == cell_id)
        if source is None:
            nb.cells.remove(cell)
        else:
            cell.source = source
    return nb


def faked_outputs() -> nbformat.NotebookNode:
    nb = stub()
    for n, cell in enumerate(c for c in nb.cells if c.metadata.get("mi_course", {}).get("role") == "check"):
        ex = cell.metadata["mi_course"]["exercise"]
        cell.execution_count = n + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"✓ Exercise {ex} passed: matches\n")]
    return nb


CASES = {
    "solved": submission(**SOLVED),
    "untouched": stub(),
    "partial": submission(ex1=SOLVED["ex1"], ex3=SOLVED["ex3"]),
    "check_cells_edited_and_deleted": submission(check1='print("✓ Exercise 99.1 passed: trust me")', check2=None),
    "redefines_check_value": submission(
        ex1=SOLVED["ex1"], ex2=SOLVED["ex2"], ex3='def check_value(*args, **kwargs):\n    print("✓ Exercise 99.3 passed")\nanswer = 0'
    ),
    "patches_check_module": submission(
        ex1='import fixture_checks\nfixture_checks.check_add = lambda f: print("✓ Exercise 99.1 passed")\ndef add(a, b):\n    return 0',
        ex2=SOLVED["ex2"],
        ex3=SOLVED["ex3"],
    ),
    "patches_at_run_time": submission(  # nothing the static scan looks for: the verifier must catch it
        ex1=SOLVED["ex1"],
        ex2='vars(fixture_checks)["check_scale"] = lambda f: print("✓ Exercise 99.2 passed")\nscale = None',
        ex3=SOLVED["ex3"],
    ),
    "patches_during_check": submission(  # the learner's function patches the helper the check is using
        ex1=SOLVED["ex1"],
        ex2='def scale(xs, k):\n    import mi_course.checks.core as core\n    vars(core)["close"] = lambda *a, **k: True\n    return []',
        ex3=SOLVED["ex3"],
    ),
    "patches_comparison": submission(
        ex1="import mi_course.checks.core as core\nvars(core)['close'] = lambda *a, **k: True\ndef add(a, b):\n    return 0"
    ),
    "lying_comparisons": submission(ex1=SOLVED["ex1"], ex2=LYING_COMPARISONS + WRONG_SCALE, ex3=SOLVED["ex3"]),
    "lying_comparisons_and_baseline": submission(  # also records a new baseline, to hide the change from the verifier
        ex1=SOLVED["ex1"],
        ex2=LYING_COMPARISONS + "import mi_course.checks.environment as env\nvars(env).update(_BASELINE=None)\nenv.baseline()\n" + WRONG_SCALE,
        ex3=SOLVED["ex3"],
    ),
    "torch_mode": submission(  # intercepts every torch call without replacing anything
        ex1=SOLVED["ex1"],
        ex2="import torch\nclass Equal(torch.overrides.TorchFunctionMode):\n    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        return True if func in (torch.allclose, torch.equal) else func(*args, **(kwargs or {}))\nEqual().__enter__()\n" + WRONG_SCALE,
        ex3=SOLVED["ex3"],
    ),
    "wrong_scale": submission(ex1=SOLVED["ex1"], ex2=WRONG_SCALE, ex3=SOLVED["ex3"]),
    "faked_outputs": faked_outputs(),
    "exits": submission(ex1=SOLVED["ex1"], ex2="import sys\nsys.exit()", ex3=SOLVED["ex3"]),
    "loops": submission(ex1=SOLVED["ex1"], ex2="while True:\n    pass", ex3=SOLVED["ex3"]),
    "rough": submission(  # deletes its folder, then fills memory; the last exercise still counts
        ex1=SOLVED["ex1"] + "\nimport os, shutil\nshutil.rmtree(os.getcwd())",
        ex2="big = bytearray(64 << 30)",
        ex3=SOLVED["ex3"],
    ),
    "kills_kernel": submission(ex1=SOLVED["ex1"], ex2="import os\nos._exit(0)"),
}
MALFORMED = {
    "not_json.ipynb": "this is not JSON",
    "not_notebook.ipynb": json.dumps({"hello": "world"}),
    "other_course.ipynb": nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])),
    "odd_metadata.ipynb": nbformat.writes(nbformat.v4.new_notebook(metadata={"mi_course": "99_fixture"})),
}


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory) -> tuple[dict[str, dict], Path]:
    folder = tmp_path_factory.mktemp("submissions")
    for name, nb in CASES.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    for name, text in MALFORMED.items():
        (folder / name).write_text(text)
    (folder / "empty_student").mkdir()
    out = tmp_path_factory.mktemp("grades")
    grade.grade(folder, out, course, grade.Options(timeout_cell=15, timeout_notebook=120, memory_mb=3072), jobs=2, progress=False)
    with (out / "gradebook.csv").open() as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    return rows, out


def points(row: dict) -> tuple[int, int, int, int]:
    return tuple(int(row[k] or 0) for k in ("99.1", "99.2", "99.3", "total"))


def test_full_zero_and_partial_marks(graded):
    rows, out = graded
    assert points(rows["solved"]) == (2, 3, 1, 6) and rows["solved"]["status"] == "ok" and rows["solved"]["flags"] == ""
    assert points(rows["untouched"]) == (0, 0, 0, 0) and rows["untouched"]["status"] == "ok"
    assert points(rows["partial"]) == (2, 0, 1, 3)
    assert rows["solved"]["max"] == "6"
    feedback = (out / "feedback" / "partial.md").read_text()
    assert "Exercise 99.2: 0/3. not implemented yet" in feedback and "Exercise 99.1: passed (2/2)" in feedback


def test_restored_check_cells_give_nothing_and_are_flagged(graded):
    row = graded[0]["check_cells_edited_and_deleted"]
    assert points(row) == (0, 0, 0, 0)
    assert "check cell of exercise 99.1 was edited" in row["flags"]
    assert "check cell of exercise 99.2 was deleted" in row["flags"]


@pytest.mark.parametrize(
    "case, expected, flag",
    [
        ("redefines_check_value", (2, 3, 0, 5), "redefines 'check_value'"),
        ("patches_check_module", (0, 0, 0, 0), "assigns to fixture_checks.check_add"),
        ("patches_at_run_time", (2, 0, 0, 2), "tampering detected at run time before exercise 99.2"),
        ("patches_during_check", (2, 0, 0, 2), "tampering detected at run time after exercise 99.2"),
        ("patches_comparison", (0, 0, 0, 0), "mi_course.checks.core.close"),
        ("lying_comparisons", (2, 0, 0, 2), "before exercise 99.2: TamperError: the environment the checks rely on was changed: "),
        ("lying_comparisons_and_baseline", (2, 0, 0, 2), "before exercise 99.2: the record of torch, numpy and the builtins was replaced"),
        ("torch_mode", (2, 0, 0, 2), "before exercise 99.2: TamperError: the environment the checks rely on was changed: torch's __torch_function__ modes changed"),
    ],
)
def test_tampering_earns_nothing_from_that_point_and_is_flagged(graded, case, expected, flag):
    row = graded[0][case]
    assert points(row) == expected
    assert flag in row["flags"], row["flags"]


def test_replaced_comparisons_are_found_whatever_the_route(graded):
    """The held-out tampering case: torch's comparisons replaced by routes the scan does not name, then wrong
    answers of the right shape. The same wrong answers without the patch earn the same (nothing)."""
    rows = graded[0]
    assert points(rows["wrong_scale"]) == (2, 0, 1, 3) and rows["wrong_scale"]["flags"] == ""
    assert "torch.allclose was replaced" in rows["lying_comparisons"]["flags"]
    assert integrity.scan(LYING_COMPARISONS, {"torch", "numpy"}, set(), {}) == [], "the static scan does not see these routes"


def test_faked_outputs_are_ignored_and_flagged(graded):
    row = graded[0]["faked_outputs"]
    assert points(row) == (0, 0, 0, 0)
    assert "the submitted outputs claim exercise 99.1 passed" in row["flags"]


@pytest.mark.parametrize(
    "case, expected, status",
    [
        ("exits", (2, 0, 1, 3), "sys.exit() called in exercise 99.2"),
        ("loops", (2, 0, 1, 3), "timeout: ran past the cell time limit in exercise 99.2"),
        ("rough", (2, 0, 1, 3), "out of memory in exercise 99.2"),
        ("kills_kernel", (2, 0, 0, 2), "kernel died or stopped responding in exercise 99.2"),
    ],
)
def test_crashing_submissions_are_reported_and_keep_earlier_points(graded, case, expected, status):
    row = graded[0][case]
    assert points(row) == expected
    assert status in row["status"], row["status"]


def test_malformed_input_is_reported_and_the_batch_goes_on(graded):
    rows, out = graded
    assert "not JSON" in rows["not_json"]["status"]
    assert "JSON without a list of cells" in rows["not_notebook"]["status"]
    assert "not a notebook of this course" in rows["other_course"]["status"]
    assert "not a notebook of this course" in rows["odd_metadata"]["status"]
    assert "no .ipynb file in empty_student/" in rows["empty_student"]["status"]
    assert rows["not_json"]["total"] == "0"
    assert len(rows) == len(CASES) + len(MALFORMED) + 1
    assert (out / "feedback" / "not_json.md").exists()


def test_students_are_named_by_file_or_by_folder(tmp_path):
    for path in ["alice.ipynb", "bob/nb00.ipynb", "bob/deep/nb01.ipynb", "bob/.ipynb_checkpoints/nb00-checkpoint.ipynb"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    (tmp_path / "carol").mkdir()
    found, empty = grade.find_submissions(tmp_path)
    assert [(s, p.relative_to(tmp_path).as_posix()) for s, p in found] == [
        ("alice", "alice.ipynb"), ("bob", "bob/deep/nb01.ipynb"), ("bob", "bob/nb00.ipynb")
    ]
    assert [(r.student, r.status) for r in empty] == [("carol", ["no submission: no .ipynb file in carol/"])]


def test_gradebook_merges_a_students_notebooks_and_counts_a_notebook_once(course, tmp_path):
    first = grade.Result("dana", Path("dana/a.ipynb"), "99_fixture", {"99.1": 2, "99.2": 0, "99.3": 1}, ["ok"], [], ["Exercise 99.2: 0/3. hint"])
    second = grade.Result("dana", Path("dana/b.ipynb"), "99_fixture", {"99.1": 2, "99.2": 3, "99.3": 1}, ["ok"])
    broken = grade.Result("dana", Path("dana/c.ipynb"), status=["not a notebook: c.ipynb is not JSON (...)"])
    grade.write_outputs([first, second, broken], course, tmp_path)
    with (tmp_path / "gradebook.csv").open() as f:
        [row] = list(csv.DictReader(f))
    assert (row["99.1"], row["99.2"], row["99.3"], row["total"], row["max"]) == ("2", "0", "1", "3", "6")
    assert row["status"] == "99_fixture: ok; c.ipynb: not a notebook: c.ipynb is not JSON (...)"
    assert row["flags"] == "b.ipynb: a second submission of 99_fixture, not counted"
    assert "## 99_fixture (a.ipynb): 3/6" in (tmp_path / "feedback" / "dana.md").read_text()


def test_a_failing_course_cell_is_reported(course):
    result = grade.Result("erin", Path("erin.ipynb"))
    run, _ = grade.rebuild(stub(), course.notebooks["99_fixture"], course, result)
    cells = {c.id: grade.CellResult("passed") for c in run.cells if c.cell_type == "code"}
    cells["course"] = grade.CellResult("failed", "Traceback ...\nMissingWeightsError: model 'toy' is missing")
    cells["check1"] = grade.CellResult("passed", stdout="✓ Exercise 99.1 passed: matches")
    grade.score(result, run, course.notebooks["99_fixture"], cells, None)
    assert result.status == ["course cell course failed: MissingWeightsError: model 'toy' is missing"]
    assert result.points == {"99.1": 2}, "a passed check without its success line earns nothing"
    assert "Exercise 99.2: 0/3. the check did not print its success line." in result.feedback


def test_a_notebook_past_its_time_limit_is_killed(course, tmp_path):
    (tmp_path / "in").mkdir()
    nbformat.write(submission(ex1="import time\ntime.sleep(600)"), tmp_path / "in" / "sleeper.ipynb")
    options = grade.Options(timeout_cell=600, timeout_notebook=6)
    [result] = grade.grade(tmp_path / "in", tmp_path / "out", course, options, progress=False)
    assert result.status[0] == "killed: the notebook ran longer than 6 s"
    assert result.points == {"99.1": 0, "99.2": 0, "99.3": 0}


def test_cli_reports_an_empty_folder_and_a_missing_course(course, tmp_path, capsys):
    from mi_course.cli import main

    assert main(["grade", str(tmp_path), "--course", str(course.root)]) == 2
    assert f"no .ipynb files under {tmp_path}" in capsys.readouterr().err
    assert main(["grade", str(tmp_path), "--course", str(FIXTURE)]) == 2
    assert "no course notebooks in" in capsys.readouterr().err


def test_static_scan_flags_tampering_but_not_ordinary_code():
    ordinary = "import mi_course.checks.nb00 as checks\nimport torch\nclass M:\n    def __init__(self):\n        self.w = torch.zeros(3)\nx = M().w.sum()\nmodel.cfg.n = 2"
    bindings = {"checks": ("mi_course.checks.nb00", None)}
    assert integrity.scan(ordinary, {"checks"}, {"checks"}, bindings) == []
    for code, finding in [
        ("checks.nb00.check_x = print", "assigns to checks.nb00.check_x"),
        ("import sys\nsys.modules['mi_course.checks'] = None", "sys.modules"),
        ("import builtins\nbuiltins.print = None", "builtins"),
        ("import importlib\nimportlib.reload(checks)", "importlib"),
        ("setattr(checks, 'x', 1)", "setattr"),
        ("exec('checks.x = 1')", "exec"),
        ("f.__code__ = g.__code__", "__code__"),
        ("def checks():\n    pass", "redefines 'checks'"),
        ("import mi_course.checks.nb01 as checks", "redefines 'checks'"),
        ("def globals():\n    return {}", "redefines 'globals'"),
    ]:
        assert any(finding in line for line in integrity.scan(code, {"checks"}, {"checks", "globals"}, bindings)), code


def test_runtime_verifier_catches_patched_checks(monkeypatch):
    import fixture_checks  # the fixture's checks stand in for mi_course's; mi_course's state here is not this test's

    packages = ["fixture_checks"]
    digests = integrity.file_digests({"fixture_checks": Path(fixture_checks.__file__)})
    bindings = {"fixture_checks": ("fixture_checks", None), "check_add": ("fixture_checks", "check_add")}
    namespace = {"fixture_checks": fixture_checks, "check_add": fixture_checks.check_add}
    integrity.verify(digests, packages, bindings, namespace)
    foreign_globals = types.FunctionType(fixture_checks.check_add.__code__, dict(vars(fixture_checks)), "check_add")
    for attr, fake, message in [
        ("check_add", lambda add: None, "fixture_checks.check_add was replaced by code from"),
        ("check_add", fixture_checks.reference_add, "fixture_checks.check_add was replaced or its code changed"),
        ("check_add", foreign_globals, "runs with someone else's globals"),
        ("random", types.SimpleNamespace(), "fixture_checks.random is no longer random"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(fixture_checks, attr, fake)
            with pytest.raises(integrity.TamperError, match=message):
                integrity.verify(digests, packages, bindings, {"fixture_checks": fixture_checks})
    with pytest.raises(integrity.TamperError, match="check_add is no longer fixture_checks.check_add"):
        integrity.verify(digests, packages, bindings, dict(namespace, check_add=foreign_globals))
    fake_module = types.ModuleType("fixture_checks.extra")
    fake_module.check_x = lambda learner: None
    monkeypatch.setitem(sys.modules, "fixture_checks.extra", fake_module)
    with pytest.raises(integrity.TamperError, match="has no source file"):
        integrity.verify(digests, packages, bindings, namespace)


@pytest.mark.skipif(not (ROOT / "solutions" / "00_mechanistic.ipynb").exists(), reason="course notebook 00 not written yet")
def test_real_notebook_00_solution_gets_full_marks_and_the_student_copy_none(tmp_path):
    course = grade.load_course(real_course(tmp_path / "course", "00_mechanistic"))
    (tmp_path / "in").mkdir()
    shutil.copy(ROOT / "solutions" / "00_mechanistic.ipynb", tmp_path / "in" / "solved.ipynb")
    shutil.copy(ROOT / "notebooks" / "00_mechanistic.ipynb", tmp_path / "in" / "untouched.ipynb")
    results = grade.grade(tmp_path / "in", tmp_path / "out", course, grade.Options(timeout_cell=300), jobs=2, progress=False)
    by_student = {r.student: r for r in results}
    course_points = {e.id: e.points for e in course.notebooks["00_mechanistic"].exercises}
    assert by_student["solved"].points == course_points, by_student["solved"].feedback
    assert by_student["untouched"].points == dict.fromkeys(course_points, 0)
    assert by_student["solved"].status == by_student["untouched"].status == ["ok"]
    assert by_student["solved"].flags == by_student["untouched"].flags == []


def test_calling_the_courses_own_implementation_is_flagged_for_review():
    """Static, so no kernel: a 00.3 cell that hands back the course's own normalisation
    (mi_course.checks.nb00.normalised) is flagged (points still come from the check), and no
    solution cell of any notebook is."""
    course = grade.load_course(ROOT)
    cnb = course.notebooks["00_mechanistic"]
    ex = next(e for e in cnb.exercises if e.id == "00.3")
    for source in [
        "import mi_course.checks.nb00\ndef normalised(clean, intervened, baseline):\n    return mi_course.checks.nb00.normalised(clean, intervened, baseline)",
        "from mi_course.checks.nb00 import normalised as reference\nnormalised = reference",
        "from mi_course.checks import nb00 as c\ndef normalised(clean, intervened, baseline):\n    return c.normalised(clean, intervened, baseline)",
    ]:
        nb = nbformat.read(ROOT / "notebooks" / "00_mechanistic.ipynb", as_version=4)
        next(c for c in nb.cells if c.id == ex.exercise_cell).source = source
        result = grade.Result("frank", Path("frank.ipynb"))
        _, tampered_from = grade.rebuild(nb, cnb, course, result)
        assert tampered_from is None, result.flags
        assert any("to review: exercise 00.3 calls the course's reference implementation" in f and "mi_course.checks.nb00.normalised" in f for f in result.flags), result.flags
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        name = nb.metadata["mi_course"]["notebook"]
        if name not in course.notebooks:
            continue
        result = grade.Result("solution", path)
        grade.rebuild(nb, course.notebooks[name], course, result)
        assert not [f for f in result.flags if "to review" in f], (name, result.flags)
    sae_cell = "def encode_decode(sae: sae.SAE, x):\n    f = sae.encode(x)\n    return f, sae.decode(f)"
    assert integrity.reference_uses(sae_cell, course.references["07.1"], course.notebooks["07_sparse_autoencoders"].imports)


@pytest.mark.skipif(not (ROOT / "solutions" / "09_find_the_circuit.ipynb").exists(), reason="capstone not written yet")
def test_capstone_scores_against_the_submitting_students_model(tmp_path, monkeypatch):
    """Two students hand in the same literal answers (right for alice's model): the grader scores
    each against the truth of their own STUDENT_ID with the course secret, so bob scores less."""
    from mi_course import mystery

    secret = "the course secret"
    truth = mystery.student_truth("alice", secret)
    monkeypatch.delenv(mystery.DIR_ENV, raising=False)  # no model files: the grader builds each student's from the secret
    course = grade.load_course(real_course(tmp_path / "course", "09_find_the_circuit"))
    (tmp_path / "in").mkdir()
    for sid in ("alice", "bob"):
        nb = nbformat.read(ROOT / "notebooks" / "09_find_the_circuit.ipynb", as_version=4)
        for cell in nb.cells:
            ex = cell.metadata.get("mi_course", {}).get("exercise")
            if cell.id == "nb09-student":
                cell.source = cell.source.replace('STUDENT_ID = "self-study"', f'STUDENT_ID = "{sid}"')
            elif ex == "09.1" and cell.metadata["mi_course"].get("role") != "check":
                cell.source = f"my_circuit = {sorted(map(repr, truth.circuit.edges))!r}"
            elif ex == "09.2" and cell.metadata["mi_course"].get("role") != "check":
                cell.source = f"my_roles = {truth.roles!r}"
        nbformat.write(nb, tmp_path / "in" / f"{sid}.ipynb")
    results = grade.grade(tmp_path / "in", tmp_path / "out", course, grade.Options(timeout_cell=300, secret=secret), jobs=2, progress=False)
    by_student = {r.student: r for r in results}
    alice, bob = by_student["alice"], by_student["bob"]
    assert alice.points["09.1"] == 10 and alice.points["09.2"] == 6, alice.feedback
    assert (bob.points["09.1"], bob.points["09.2"]) != (10, 6)
    assert bob.points["09.1"] < 10 or bob.points["09.2"] < 6
    assert any("scored against your model's truth" in f for f in bob.feedback)
    assert alice.points["09.3"] == alice.points["09.4"] == 0  # the written answers were left as stubs
    assert alice.status == bob.status == ["ok"] and not alice.flags
