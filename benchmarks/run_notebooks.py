"""Execute every solution notebook as nbval does and print wall time and peak memory.

    python benchmarks/run_notebooks.py            # every notebook in solutions/
    python benchmarks/run_notebooks.py 00 02      # some of them
    python benchmarks/run_notebooks.py --quick    # the first notebook only (CI)

Each notebook runs in its own process tree (pytest + its kernel), so one notebook's memory
does not count against another. Peak memory is the largest resident set of any process in
that tree (the kernel, in practice). Budgets: 60 s per notebook (90 s for 03, 04, 06, 07),
6 minutes for the course, 2 GB peak per notebook. Exits 1 when a notebook fails or a budget
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or imported by run_all
from table import Row, at_most, report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOW = {"03", "04", "06", "07"}
COURSE_BUDGET_S = 360
MEMORY_BUDGET_MB = 2048

# Runs in a fresh interpreter: executes nbval and reports the tree's peak RSS.
_MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", sys.argv[1]],
                    capture_output=True, text=True).returncode
wall = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": rc, "wall": wall, "peak_mb": peak_kb / 1024}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool, names: Sequence[str] = ()) -> list[Row]:
    """Time every selected solution notebook (quick: the first only); two rows each, and the course total."""
    paths = sorted((ROOT / "solutions").glob("*.ipynb"))
    if names:
        paths = [p for p in paths if p.name[:2] in names]
    if quick:
        paths = paths[:1]
    if not paths:
        raise SystemExit("run_notebooks: no solution notebooks matched")
    rows, total = [], 0.0
    print(f"{'notebook':28} {'result':7} {'wall s':>7} {'budget':>7} {'peak MB':>8}")
    for path in paths:
        r = measure(path)
        budget = 90 if path.name[:2] in SLOW else 60
        total += r["wall"]
        result = "passed" if r["rc"] == 0 else "FAILED"
        wall = at_most("notebooks", f"{path.stem}: wall time", r["wall"], budget, "s")
        if r["rc"] != 0:  # a failing notebook misses its budget whatever its time
            wall = replace(wall, item=f"{path.stem}: wall time (notebook FAILED)", ok=False)
        memory = at_most("notebooks", f"{path.stem}: peak memory", r["peak_mb"], MEMORY_BUDGET_MB, "MB")
        rows += [wall, memory]
        flag = "" if r["rc"] != 0 or (wall.ok and memory.ok) else "  <- over budget"
        print(f"{path.stem:28} {result:7} {r['wall']:7.1f} {budget:7d} {r['peak_mb']:8.0f}{flag}")
    print(f"{'total':28} {'':7} {total:7.1f} {COURSE_BUDGET_S:7d}")
    if quick or names:  # the course budget applies to the whole course only
        rows.append(Row("notebooks", f"total ({len(paths)} notebooks)", total, unit="s"))
    else:
        rows.append(at_most("notebooks", f"course total ({len(paths)} notebooks)", total, COURSE_BUDGET_S, "s"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook number prefixes, e.g. 00 03")
    parser.add_argument("--quick", action="store_true", help="only the first notebook (a smoke run for CI)")
    args = parser.parse_args()
    return report(run(args.quick, args.names))


if __name__ == "__main__":
    raise SystemExit(main())
