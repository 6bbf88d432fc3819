"""The class report (`mi-course grade --out DIR`): a synthetic class of 12 fixture submissions with
planted mistakes in known proportions is graded for real, and the report must give those
proportions exactly, in the CSVs, the markdown and the self-contained HTML.
"""

from __future__ import annotations

import base64
import csv
import re
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from mi_course import grade, report
from mi_course.build import student_notebook
from mi_course.checks.core import CheckFailed

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "grading"))
from grading_fixture import SOLUTION, fixture_course  # noqa: E402

EXERCISES = ("99.1", "99.2", "99.3")
ADD, SCALE, ANSWER = "def add(a, b):\n    return a + b", "def scale(xs, k):\n    return [x * k for x in xs]", "answer = 42"
SUBTRACTS = "def add(a, b):\n    return a - b"  # the fixture's named typical mistake `subtracts` (99.1)
ADDS_K = "def scale(xs, k):\n    return xs + k"  # the fixture's typical mistake written as a lambda (99.2)
MULTIPLIES = "def add(a, b):\n    return a * b"  # a mistake the check does not know: the generic hint
WRONG_VALUE = "answer = 41"  # check_value's generic hint
CRASH = "import os\nos._exit(1)"  # the kernel dies in 99.2: 99.2 and 99.3 give no result
TAMPER = 'vars(fixture_checks)["check_scale"] = lambda f: print("✓ Exercise 99.2 passed")\nscale = None'
STUB = None  # the course's stub left in
Y_ID = CheckFailed("99.2", "you added k instead of multiplying by it.").mistake  # a lambda's id: a digest of its hint

# student -> per exercise: (code, kind of outcome, mistake id); the proportions the report must give.
P, NA, NR = ("passed", ""), ("not-attempted", "no-answer"), ("no-result", "")
PLAN = {
    "s01": [(ADD, *P), (SCALE, *P), (ANSWER, *P)],
    "s02": [(ADD, *P), (SCALE, *P), (ANSWER, *P)],
    "s03": [(SUBTRACTS, "mistake", "subtracts"), (SCALE, *P), (ANSWER, *P)],
    "s04": [(SUBTRACTS, "mistake", "subtracts"), (SCALE, *P), (ANSWER, *P)],
    "s05": [(SUBTRACTS, "mistake", "subtracts"), (SCALE, *P), (ANSWER, *P)],
    "s06": [(ADD, *P), (ADDS_K, "mistake", Y_ID), (STUB, *NA)],
    "s07": [(ADD, *P), (ADDS_K, "mistake", Y_ID), (ANSWER, *P)],
    "s08": [(STUB, *NA), (STUB, *NA), (STUB, *NA)],
    "s09": [(STUB, *NA), (STUB, *NA), (STUB, *NA)],
    "s10": [(MULTIPLIES, "generic", "generic"), (SCALE, *P), (WRONG_VALUE, "generic", "generic")],
    "s11": [(ADD, *P), (CRASH, *NR), (ANSWER, *NR)],
    "s12": [(ADD, *P), (TAMPER, *NR), (ANSWER, *NR)],
}
TO_LOOK_AT = {"s06": "low score", "s08": "low score", "s09": "low score", "s11": "kernel died", "s12": "flag: tampering detected at run time"}
N = len(PLAN)


def planted(student: str) -> nbformat.NotebookNode:
    nb = student_notebook(nbformat.read(SOLUTION, as_version=4), "99_fixture")
    for cell_id, (code, _, _) in zip(("ex1", "ex2", "ex3"), PLAN[student]):
        if code is not None:
            next(c for c in nb.cells if c.id == cell_id).source = code
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[Path, list[grade.Result]]:
    course = grade.load_course(fixture_course(tmp_path_factory.mktemp("course")))
    folder = tmp_path_factory.mktemp("class")
    for student in PLAN:
        nbformat.write(planted(student), folder / f"{student}.ipynb")
    out = tmp_path_factory.mktemp("grades")
    results = grade.grade(folder, out, course, grade.Options(timeout_cell=30, timeout_notebook=240, memory_mb=3072), jobs=2, progress=False)
    return out, results


def expected_counts(exercise: str) -> Counter:
    i = EXERCISES.index(exercise)
    return Counter(plan[i][1] for plan in PLAN.values())


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_every_submission_ends_as_planted(graded):
    _, results = graded
    got = {r.student: [(r.outcomes[e].kind, r.outcomes[e].mistake) for e in EXERCISES] for r in results}
    for student, plan in PLAN.items():
        for (_, kind, mistake), (got_kind, got_mistake) in zip(plan, got[student]):
            assert got_kind == kind and (got_mistake == mistake or not mistake), (student, got[student])
    assert Y_ID.startswith("h") and Y_ID != "generic"


def test_exercise_stats_give_the_planted_proportions(graded):
    out, _ = graded
    rows = {r["exercise"]: r for r in read_csv(out / "exercise_stats.csv")}
    assert sorted(rows) == list(EXERCISES)
    columns = {"passed": "passed", "not-attempted": "not_attempted", "mistake": "known_mistake", "generic": "generic", "no-result": "no_result"}
    for exercise in EXERCISES:
        row, want = rows[exercise], expected_counts(exercise)
        assert row["students"] == str(N)
        for kind, column in columns.items():
            assert int(row[column]) == want[kind], (exercise, kind, row)
            share = row["pass_rate" if kind == "passed" else f"{column}_share"]
            assert share == f"{want[kind] / N:.4f}"
    # read plainly: half the class passed 99.1, a quarter made the named mistake, one student in 12 a mistake the check does not know
    assert (rows["99.1"]["pass_rate"], rows["99.1"]["known_mistake"], rows["99.1"]["generic"], rows["99.1"]["not_attempted"]) == ("0.5000", "3", "1", "2")
    assert (rows["99.3"]["not_attempted"], rows["99.3"]["no_result"]) == ("3", "2")
    assert rows["99.2"]["difficulty_rank"] != rows["99.1"]["difficulty_rank"]


def test_mistakes_csv_counts_each_hint_by_its_stable_id(graded):
    out, _ = graded
    rows = read_csv(out / "mistakes.csv")
    got = {(r["exercise"], r["mistake_id"]): (int(r["count"]), r["share"], r["kind"], r["students"]) for r in rows}
    want: dict[tuple[str, str], list[str]] = {}
    for student, plan in PLAN.items():
        for exercise, (_, kind, mistake) in zip(EXERCISES, plan):
            if kind in ("mistake", "generic"):
                want.setdefault((exercise, mistake), []).append(student)
    assert set(got) == set(want)
    for key, students in want.items():
        count, share, kind, who = got[key]
        assert count == len(students) and share == f"{len(students) / N:.4f}" and who == " ".join(students)
    assert got["99.1", "subtracts"][:3] == (3, "0.2500", "mistake")
    assert got["99.2", Y_ID][:3] == (2, "0.1667", "mistake")
    hints = {(r["exercise"], r["mistake_id"]): r["hint"] for r in rows}
    assert hints["99.1", "subtracts"] == "you subtracted b instead of adding it."
    assert hints["99.3", "generic"] == "not the expected answer yet."
    assert all(r["concept"] for r in rows) and rows[0]["notebook"] == "99_fixture"


def test_markdown_and_html_give_the_same_proportions(graded):
    out, _ = graded
    md, page = (out / "class_report.md").read_text(), (out / "class_report.html").read_text()
    for exercise in EXERCISES:
        want = expected_counts(exercise)
        cells = [f"{want[k]}/{N} ({100 * want[k] / N:.0f}%)" for k in report.KINDS]
        assert re.search(rf"^\| {re.escape(exercise)} \| [^|]+ \| " + re.escape(" | ".join(cells)) + r" \|$", md, re.M), exercise
        assert "".join(f"<td>{c}</td>" for c in cells) in page, exercise
    assert "| subtracts | you subtracted b instead of adding it. | 3/12 (25%) | s03 s04 s05 |" in md
    unknown = md.split("## Mistakes the checks do not know yet")[1].split("## Students to look at")[0]
    assert "| 99.1 | Write `add(a, b)`. | 1/12 (8%) | s10 |" in unknown and "| 99.3 | Set `answer`. | 1/12 (8%) | s10 |" in unknown
    assert (out / "figures" / "99_fixture_scores.png").read_bytes().startswith(b"\x89PNG")


def test_students_to_look_at(graded):
    out, _ = graded
    section = (out / "class_report.md").read_text().split("## Students to look at")[1]
    listed = dict(re.findall(r"^\| (s\d\d) \| \d+/6 \| (.*) \|$", section, re.M))
    assert set(listed) == set(TO_LOOK_AT)
    for student, why in TO_LOOK_AT.items():
        assert why in listed[student], (student, listed[student])
    order = re.findall(r"^\| (s\d\d) \|", section, re.M)
    assert order == ["s12", "s11", "s08", "s09", "s06"], "integrity flags, then crashes, then the lowest scores"


def test_html_needs_no_network(graded):
    out, _ = graded
    page = (out / "class_report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<script|<link|<iframe|<object|<embed|@import|url\(|@font-face", page, re.I)
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(images) == 2  # one notebook: its histogram and its difficulty chart
    for src in images:
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")


# ---------------------------------------------------------------- without kernels


def test_the_mistake_id_comes_from_the_line_under_the_hint():
    message = "Cell execution caused an exception\n✗ Exercise 9.1 not passed yet.\nHint: you transposed W_K.\n(check 9.1, mistake id transposed_key)"
    cell = grade.CellResult("failed", message)
    assert grade._outcome("9.1", cell, "you transposed W_K.", "") == grade.Outcome("mistake", "transposed_key", "you transposed W_K.")
    # a line for another exercise (printed by the learner's code) is not this check's
    assert grade._outcome("9.2", cell, "you transposed W_K.", "").mistake == CheckFailed("9.2", "you transposed W_K.").mistake
    generic = grade.CellResult("failed", "Hint: on a fresh random input differs.\n(check 9.1, mistake id generic)")
    assert grade._outcome("9.1", generic, "on a fresh random input differs.", "").kind == "generic"
    stub = grade.CellResult("failed", "Hint: not implemented yet: replace the `raise NotImplementedError` line.\n(check 9.1, mistake id h0123abcd)")
    assert grade._outcome("9.1", stub, "not implemented yet: replace the `raise NotImplementedError` line.", "").kind == "not-attempted"
    assert grade._outcome("9.1", grade.CellResult("failed", "Timeout of 5 seconds"), None, grade.EVENTS["Timeout of"]).mistake == "timeout"
    assert grade._outcome("9.1", grade.CellResult("skipped"), None, "did not run").mistake == "not-run"


def test_concepts_come_from_the_exercise_title(tmp_path):
    course = grade.load_course(fixture_course(tmp_path))
    cnb = course.notebooks["99_fixture"]
    assert [report.exercise_concept(cnb, e.id) for e in cnb.exercises] == ["Write `add(a, b)`.", "Write `scale(xs, k)`.", "Set `answer`."]
    cnb.nb.cells[2].source = "### Exercise 99.1 · DLA of one head\n\nMore text."
    cnb.nb.cells.insert(3, nbformat.v4.new_markdown_cell("Prose between the title and the cell."))
    assert report.exercise_concept(cnb, "99.1") == "DLA of one head"
    cnb.nb.cells[2].source = "### 5.2 · Reading the weights\n\nNo exercise title."
    assert report.exercise_concept(cnb, "99.1") == "Reading the weights"


def test_student_text_is_escaped_and_second_submissions_are_not_counted(tmp_path):
    course = grade.load_course(fixture_course(tmp_path / "course"))
    evil = '<img src="https://example.com/x.png"><script>alert(1)</script>'
    first = grade.Result("eve", Path("eve/a.ipynb"), "99_fixture", {"99.1": 0, "99.2": 3, "99.3": 1}, ["ok"])
    first.outcomes = {"99.1": grade.Outcome("mistake", "hdeadbeef", evil), "99.2": grade.Outcome("passed"), "99.3": grade.Outcome("passed")}
    second = grade.Result("eve", Path("eve/b.ipynb"), "99_fixture", {"99.1": 2, "99.2": 3, "99.3": 1}, ["ok"])
    broken = grade.Result("zed", Path("zed.ipynb"), status=["not a notebook: zed.ipynb is not JSON"])
    page = report.write_report([first, second, broken], course, tmp_path / "out").read_text()
    assert "<script" not in page and 'src="https://' not in page and "&lt;script&gt;" in page
    [row] = [r for r in read_csv(tmp_path / "out" / "exercise_stats.csv") if r["exercise"] == "99.1"]
    assert (row["students"], row["passed"], row["known_mistake"]) == ("1", "0", "1")
    listed = (tmp_path / "out" / "class_report.md").read_text().split("## Students to look at")[1]
    assert "| zed | 0/6 | zed.ipynb: not a notebook: zed.ipynb is not JSON; low score: 0/6 |" in listed
