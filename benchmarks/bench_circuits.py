"""The greedy circuit finder (mi_course.circuits.acdc) on the two models whose answers we can check.

    python benchmarks/bench_circuits.py           # full: toy-lm IOI as in notebook 04 (60 search prompts)
    python benchmarks/bench_circuits.py --quick   # a few seconds, for CI

handwired-induction: the search must return exactly the planted circuit. toy-lm on IOI: the
circuit found on the search prompts must keep >= 80% of the logit difference on 100 held-out
prompts with at most 15% of the edges (full mode only; quick mode searches 10 prompts).
Also printed: the search time and its forward passes per edge of the graph. One torch thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from mi_course import ground_truth, load_model
from mi_course.circuits import acdc, faithfulness, graph
from mi_course.tasks import make_task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file, or imported by run_all
from table import Row, at_least, at_most, quick_cli, timing  # noqa: E402


def run(quick: bool) -> list[Row]:
    """Rows for the planted circuit's recovery and for the IOI circuit's size, faithfulness and cost."""
    torch.set_num_threads(1)
    rows = []
    hw = load_model("handwired-induction")
    task = make_task("induction", hw, n=20, seed=0)
    other = make_task("induction", hw, n=20, seed=1).clean_tokens  # another repeated sequence
    found = acdc(hw, task.clean_tokens, other, task.metric, threshold=0.1, progress=False)
    exact = found.circuit.edges == ground_truth("handwired-induction").edges
    print(f"handwired-induction: {len(found.circuit)} edges found, planted circuit recovered exactly: {exact}")
    rows.append(at_least("circuits", "handwired-induction: planted circuit recovered exactly (1 = yes)", float(exact), 1))

    toy = load_model("toy-lm")
    n_search = 10 if quick else 60
    ioi, held_out = make_task("ioi", toy, n=n_search, seed=0), make_task("ioi", toy, n=100, seed=1)
    start = time.perf_counter()
    search = acdc(toy, ioi.clean_tokens, ioi.corrupted_tokens, ioi.metric, threshold=0.01, progress=False)
    seconds = time.perf_counter() - start
    n_edges = len(graph(toy).edges)
    held = faithfulness(toy, search.circuit, held_out.clean_tokens, held_out.corrupted_tokens, held_out.metric)
    fraction = len(search.circuit) / n_edges
    print(f"toy-lm IOI ({n_search} search prompts, threshold 0.01): {len(search.circuit)} of {n_edges} edges, "
          f"faithfulness {search.faithfulness:.3f} (search) {held:.3f} (100 held-out), {search.forward_passes} passes in {seconds:.1f} s")  # fmt: skip
    item = f"toy-lm IOI ({n_search} prompts)"
    if quick:
        rows += [Row("circuits", f"{item}: fraction of edges kept", fraction), Row("circuits", f"{item}: held-out faithfulness", held)]
    else:
        rows += [at_most("circuits", f"{item}: fraction of edges kept", fraction, 0.15), at_least("circuits", f"{item}: held-out faithfulness", held, 0.8)]
    rows += [timing("circuits", f"{item}: ACDC search time", seconds), Row("circuits", f"{item}: forward passes per edge", search.forward_passes / n_edges)]
    return rows


if __name__ == "__main__":
    raise SystemExit(quick_cli(run, __doc__, "10 search prompts instead of 60; no targets on the IOI figures"))
