"""Run every benchmark and print one table: our figure, the peer's, the ratio, the target, pass or fail.

    python benchmarks/run_all.py                          # the full figures (13 minutes on 2 busy cores, 7 of them grading)
    python benchmarks/run_all.py --quick                  # every benchmark in its quick mode (CI)
    python benchmarks/run_all.py --quick --notebooks 00   # choose the notebooks (with or without --quick)
    python benchmarks/run_all.py --only sae probing       # some benchmarks only

The benchmarks, in order: the solution notebooks (time and memory against their budgets),
activation patching against transformer_lens.patching, EAP against exact edge patching, the
greedy circuit finder against known answers, our SAE against SAELens, our probe against
scikit-learn, and the grader. Each prints its own details as it runs; the combined table
comes last. Exits 1 when any row misses its target
(a result that disagrees with its peer, or a budget that is missed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attribution  # noqa: E402
import bench_circuits  # noqa: E402
import bench_patching  # noqa: E402
import bench_probing  # noqa: E402
import bench_sae  # noqa: E402
import grade_bench  # noqa: E402
import run_notebooks  # noqa: E402
from table import report  # noqa: E402

BENCHES = {
    "notebooks": run_notebooks.run,
    "patching": bench_patching.run,
    "attribution": bench_attribution.run,
    "circuits": bench_circuits.run,
    "sae": bench_sae.run,
    "probing": bench_probing.run,
    "grading": grade_bench.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick mode (a smoke run for CI)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES), help="the benchmarks to run")
    parser.add_argument("--notebooks", nargs="+", default=(), metavar="NN", help="notebook number prefixes (default: all; --quick: the first)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each detail as it is measured, also into a log file
    rows, start = [], time.perf_counter()
    for name in args.only:
        print(f"\n== {name} ==")
        bench = BENCHES[name]
        rows += bench(args.quick, args.notebooks) if name == "notebooks" else bench(args.quick)
    status = report(rows)
    print(f"\nrun_all{' --quick' if args.quick else ''}: {len(rows)} rows in {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
