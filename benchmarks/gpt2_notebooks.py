"""How long each notebook's GPT-2 path takes on this CPU, with a full-size GPT-2 small stand-in.

    python benchmarks/gpt2_notebooks.py            # every notebook with a MODEL_NAME, full size
    python benchmarks/gpt2_notebooks.py 02 05      # some of them
    python benchmarks/gpt2_notebooks.py --small    # the small stand-in CI uses (a smoke run)

The stand-in has GPT-2 small's shape (12 layers, 12 heads, d_model 768, GPT-2's tokenizer and
config format) with random weights, in a temporary Hugging Face cache, loaded offline through
`load_model("gpt2-small")` exactly as the real one is. A forward pass costs the same with
random weights, so the times are GPT-2 small's; the figures the notebooks print are not.
The README's table of GPT-2 times comes from this script. It is a measurement, with no peer
and no budget: the budgets of benchmarks/run_notebooks.py are for the course's own models.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_path import FULL_SIZE, STANDIN_SIZE, notebooks_with_model_name, run  # noqa: E402
from gpt2_standin import build_gpt2_standin  # noqa: E402
from table import Row, report  # noqa: E402


def measure(small: bool, names: list[str]) -> list[Row]:
    """One row per notebook: its wall time on the stand-in (failing notebooks fail their row)."""
    paths = [p for p in notebooks_with_model_name() if not names or p.name[:2] in names]
    if not paths:
        raise SystemExit("gpt2_notebooks: no notebook matched")
    size = STANDIN_SIZE if small else FULL_SIZE
    print(f"GPT-2 stand-in {size} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt2-standin-") as tmp:
        build_gpt2_standin(Path(tmp), **size)
        for path in paths:
            r = run(path, Path(tmp), timeout=1800)
            status = "ok" if not r.errors else f"{len(r.errors)} cell errors: {r.errors[0]}"
            print(f"{r.notebook:28} {r.seconds:7.1f} s  {status}", flush=True)
            rows.append(Row("gpt2", f"{r.notebook}: wall time{' (FAILED)' if r.errors else ''}", r.seconds, unit="s", ok=not r.errors))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook number prefixes, e.g. 02 05")
    parser.add_argument("--small", action="store_true", help="the small stand-in used in CI instead of GPT-2 small's size")
    args = parser.parse_args()
    return report(measure(args.small, args.names))


if __name__ == "__main__":
    raise SystemExit(main())
