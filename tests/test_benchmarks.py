"""The course-level benchmark scripts run in their quick modes, so they cannot rot.

(The patching and attribution benchmarks have their quick-mode tests beside their modules.)
"""

from __future__ import annotations

import subprocess
import sys


def run(root, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "benchmarks" / script), *args], cwd=root, capture_output=True, text=True, timeout=900)


def test_run_notebooks_quick_prints_time_and_memory(root):
    result = run(root, "run_notebooks.py", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(l for l in result.stdout.splitlines() if l.startswith("00_mechanistic"))
    name, status, wall, budget, peak = row.split()[:5]
    assert status == "passed" and 0 < float(wall) <= float(budget) and 0 < float(peak) < 2048


def test_grade_bench_quick_grades_every_copy(root):
    result = run(root, "grade_bench.py", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3" in result.stdout
