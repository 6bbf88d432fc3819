"""Time `mi-course grade` on N copies of one solved notebook, and what the class report adds to it.

    python benchmarks/grade_bench.py                  # 30 copies of notebook 00 (or the fixture if absent)
    python benchmarks/grade_bench.py --quick          # 3 copies of the fixture notebook (for CI)
    python benchmarks/grade_bench.py --notebook 01_residual_stream --copies 10 --jobs 2

Every copy is a solved notebook, so every copy must get full marks; the script exits 1 if not.
The class report (mi_course.report) is timed in the same run, on the same results, right after
the grading (as `mi-course grade` writes it, matplotlib's import included): grading with the
report must take at most 1.10 times as long as without it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests" / "fixtures" / "grading"))
sys.path.insert(0, str(BENCHMARKS))  # run as a file, or imported by run_all
from grading_fixture import ROOT, SOLUTION, fixture_course, real_course  # noqa: E402
from table import Row, at_least, at_most, timing  # noqa: E402
from table import report as print_table  # noqa: E402

from mi_course import grade, report  # noqa: E402


def run(quick: bool, copies: int = 30, jobs: int = 2, notebook: str = "00_mechanistic") -> list[Row]:
    """Grade ``copies`` solved copies (quick: 3 of the fixture): the time per notebook, the fraction with full
    marks, and the time with the class report over the time without it."""
    solution = ROOT / "solutions" / f"{notebook}.ipynb"
    if quick or not solution.exists():
        copies = 3 if quick else copies
        solution = SOLUTION
    with tempfile.TemporaryDirectory(prefix="grade-bench-") as tmp:
        tmp = Path(tmp)
        make = fixture_course if solution == SOLUTION else lambda dest: real_course(dest, notebook)
        course = grade.load_course(make(tmp / "course"))
        (tmp / "in").mkdir()
        for i in range(copies):
            shutil.copy(solution, tmp / "in" / f"student{i:03d}.ipynb")
        start = time.perf_counter()
        results = grade.grade(tmp / "in", tmp / "out", course, grade.Options(), jobs=jobs, report=False)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        report.write_report(results, course, tmp / "out")  # what grade(report=True) does last
        reporting = time.perf_counter() - start
    full = sum(e.points for e in course.notebooks[solution.stem].exercises)
    wrong = [r.student for r in results if sum(r.points.values()) != full or r.status != ["ok"]]
    print(
        f"graded {copies} copies of {solution.stem} with --jobs {jobs}: {elapsed:.1f} s "
        f"({elapsed / copies:.2f} s per notebook; {elapsed * jobs / copies:.2f} s of a worker each)"
    )
    ratio = (elapsed + reporting) / elapsed
    print(f"class report: {reporting:.2f} s after {elapsed:.1f} s of grading: with the report, grading takes {ratio:.3f}x the time without it")
    if wrong:
        print(f"not full marks: {', '.join(wrong)}", file=sys.stderr)
    what = f"{copies} copies of {solution.stem}, --jobs {jobs}"
    return [
        timing("grading", f"{what}: time per notebook", elapsed / copies),
        at_least("grading", f"{what}: fraction with full marks", 1 - len(wrong) / copies, 1.0),
        timing("grading", f"{what}: class report (all notebooks)", reporting),
        at_most("grading", f"{what}: time with the class report / without", ratio, 1.10),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--notebook", default="00_mechanistic", help="course notebook to grade (falls back to the fixture if absent)")
    parser.add_argument("--quick", action="store_true", help="3 copies of the fixture notebook")
    args = parser.parse_args()
    return print_table(run(args.quick, args.copies, args.jobs, args.notebook))


if __name__ == "__main__":
    raise SystemExit(main())
