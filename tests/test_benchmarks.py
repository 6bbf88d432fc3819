"""The benchmarks run in their quick modes through the one command, so they cannot rot; and the table's rules.

`benchmarks/run_all.py --quick` runs once for the module (about 45 s on 2 cores): the first
solution notebook, the patching, attribution, SAE and probing comparisons with their peers,
the circuit finder and the grader. (The patching and attribution benchmarks also have tests beside their modules.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BENCHES = {"notebooks", "patching", "attribution", "circuits", "sae", "probing", "grading"}


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the last table `table.report` printed, as {column: cell}, cut at the dashed rule's columns."""
    lines = text.splitlines()
    rule = max(i for i, line in enumerate(lines) if line.startswith("-----"))
    spans, start = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    spans[-1] = (spans[-1][0], None)
    names = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append({name: line[a:b].strip() for name, (a, b) in zip(names, spans)})
    return rows


def number(cell: str) -> float:
    return float(cell.split()[0])


@pytest.fixture(scope="module")
def quick(root) -> tuple[subprocess.CompletedProcess, dict[tuple[str, str], dict[str, str]]]:
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "run_all.py"), "--quick"], cwd=root, capture_output=True, text=True, timeout=900)
    return result, {(r["bench"], r["item"]): r for r in parse_table(result.stdout)}


def test_run_all_quick_passes_and_prints_every_benchmark(quick):
    result, rows = quick
    assert result.returncode == 0, result.stdout + result.stderr
    assert {bench for bench, _ in rows} == BENCHES
    assert all(r["result"] in ("pass", "") for r in rows.values())
    assert all(r["result"] == "pass" for r in rows.values() if r["target"])


def test_run_all_quick_times_the_first_notebook_within_budget(quick):
    result, rows = quick
    detail = next(line for line in result.stdout.splitlines() if line.startswith("00_mechanistic"))
    assert detail.split()[1] == "passed"
    wall, memory = rows["notebooks", "00_mechanistic: wall time"], rows["notebooks", "00_mechanistic: peak memory"]
    assert 0 < number(wall["ours"]) <= 60 and wall["target"] == "<= 60 s"
    assert 100 < number(memory["ours"]) < 2048


def test_run_all_quick_compares_with_the_peers(quick):
    _, rows = quick
    for sweep in ("head x position (z)", "MLP output x position"):
        timing = rows["patching", f"{sweep} vs transformer_lens: time"]
        assert number(timing["ours"]) > 0 and number(timing["peer"]) > 0 and timing["ratio"].endswith("x")
        assert number(rows["patching", f"{sweep}: max |diff|"]["ours"]) <= 1e-4
    assert number(rows["attribution", "random 2-layer: EAP Spearman vs exact"]["ours"]) >= 0.5
    for kind in ("TopK (k=16)", "ReLU + L1 (5.0)"):
        variance = rows["sae", f"{kind}: explained variance"]
        assert number(variance["ours"]) > 0.5 and number(variance["peer"]) > 0.5
        assert number(rows["sae", f"{kind}: CE loss score"]["ours"]) > 0.9
    assert number(rows["sae", "TopK (k=16): L0"]["ours"]) == number(rows["sae", "TopK (k=16): L0"]["peer"]) == 16
    assert number(rows["probing", "after L1: same prediction as scikit-learn"]["ours"]) > 0.95
    accuracy = rows["probing", "after L1: test accuracy"]
    assert number(accuracy["ours"]) > 0.9 and abs(number(accuracy["ours"]) - number(accuracy["peer"])) <= 0.02
    assert number(rows["circuits", "handwired-induction: planted circuit recovered exactly (1 = yes)"]["ours"]) == 1
    ioi = number(rows["circuits", "toy-lm IOI (10 prompts): fraction of edges kept"]["ours"])
    assert 0 < ioi < 0.5 and number(rows["circuits", "toy-lm IOI (10 prompts): forward passes per edge"]["ours"]) <= 1
    assert number(rows["grading", "3 copies of 99_fixture, --jobs 2: fraction with full marks"]["ours"]) == 1


def test_table_ratio_targets_and_exit_status(root, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    from table import Row, agreement, at_least, at_most, format_table, report, timing

    fast, slow = timing("b", "fast", 0.5, 2.0, min_ratio=3), timing("b", "slow", 1.0, 2.0, min_ratio=3)
    assert fast.ratio == 4 and fast.ok and slow.ratio == 2 and not slow.ok
    assert timing("b", "alone", 1.0).ratio is None and Row("b", "score", 1.0, 2.0).ratio is None  # ratios of times only
    assert agreement("b", "a", 0.90, 0.93, 0.05).ok and not agreement("b", "a", 0.90, 0.96, 0.05).ok
    assert at_most("b", "m", 2048, 2048, "MB").ok and not at_most("b", "m", 2049, 2048, "MB").ok
    assert at_least("b", "f", 0.95, 0.95).ok and not at_least("b", "f", 0.94, 0.95).ok
    rows = [fast, at_most("b", "memory", 600, 2048, "MB"), Row("b", "L0", 16.0, 16.0)]
    assert report(rows) == 0
    parsed = parse_table(capsys.readouterr().out)
    assert [(r["item"], r["ours"], r["peer"], r["ratio"], r["result"]) for r in parsed] == [
        ("fast", "0.500 s", "2.00 s", "4.0x", "pass"), ("memory", "600 MB", "", "", "pass"), ("L0", "16.0", "16.0", "", "")
    ]
    assert report([*rows, slow]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 of 4 rows missed their target: b: slow" in out
    assert format_table([]).count("\n") == 1  # a header and its rule
