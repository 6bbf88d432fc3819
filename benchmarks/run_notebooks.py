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
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook number prefixes, e.g. 00 03")
    parser.add_argument("--quick", action="store_true", help="only the first notebook (a smoke run for CI)")
    args = parser.parse_args()
    paths = sorted((ROOT / "solutions").glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.name[:2] in args.names]
    if args.quick:
        paths = paths[:1]
    if not paths:
        print("run_notebooks: no solution notebooks matched", file=sys.stderr)
        return 1
    ok = True
    total = 0.0
    print(f"{'notebook':28} {'result':7} {'wall s':>7} {'budget':>7} {'peak MB':>8}")
    for path in paths:
        r = measure(path)
        budget = 90 if path.name[:2] in SLOW else 60
        total += r["wall"]
        fine = r["rc"] == 0 and r["wall"] <= budget and r["peak_mb"] <= MEMORY_BUDGET_MB
        ok &= fine
        result = "passed" if r["rc"] == 0 else "FAILED"
        flag = "" if fine else "  <- over budget" if r["rc"] == 0 else ""
        print(f"{path.stem:28} {result:7} {r['wall']:7.1f} {budget:7d} {r['peak_mb']:8.0f}{flag}")
    if not args.quick and not args.names:
        ok &= total <= COURSE_BUDGET_S
    print(f"{'total':28} {'':7} {total:7.1f} {COURSE_BUDGET_S:7d}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
