"""Checked outputs are the same on every CPU: a second nbval pass with another summation order.

A `# NBVAL_CHECK_OUTPUT` cell must print only what is identical on any machine and BLAS
build (integers and verdicts; figures are checked by asserts with a tolerance). A figure
that sits near a rounding boundary, or a trained result that moves with the last bits of a
float, prints the same on the author's machine every time and differently on another CPU.
To catch such a cell on one machine, this test re-runs nbval on every solution notebook with
``ATEN_CPU_CAPABILITY=default``: torch then uses its plain (non-vectorised) kernels, whose
reductions add in another order, as a different CPU's kernels do. The ordinary pass runs
in the same pytest session (``testpaths`` includes ``solutions/``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
PERTURBED = {"ATEN_CPU_CAPABILITY": "default"}


def test_perturbation_changes_float_results():
    """The perturbation is real: the same float32 sum differs in its last bits between the two kernels."""
    code = (
        "import torch; torch.manual_seed(0); x = torch.randn(1 << 20);"
        "print(torch.backends.cpu.get_cpu_capability(), repr(float(x.sum())))"
    )

    def run(extra: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"} | extra
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()

    native, plain = run({}), run(PERTURBED)
    assert plain[0] == "DEFAULT", f"ATEN_CPU_CAPABILITY=default was not applied: {plain}"
    if native[0] == "DEFAULT":
        pytest.skip("this CPU already runs torch's plain kernels; the second pass cannot perturb anything")
    assert native[1] != plain[1], "the vectorised and plain kernels summed identically: the second pass would perturb nothing"


@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_checked_outputs_hold_with_another_summation_order(notebook: Path):
    env = {**os.environ, **PERTURBED, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(notebook.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    assert proc.returncode == 0, (
        f"{notebook.name} fails under ATEN_CPU_CAPABILITY=default ({', '.join(failed) or 'see below'}): a checked cell "
        "prints something that depends on the CPU's summation order. Print only integers and verdicts in "
        "# NBVAL_CHECK_OUTPUT cells and assert figures with a tolerance.\n" + proc.stdout[-4000:]
    )
