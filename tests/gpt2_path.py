"""Run a solution notebook with ``MODEL_NAME = "gpt2-small"`` on a stand-in GPT-2, offline.

The stand-in (see `gpt2_standin`) is GPT-2's real tokenizer and the hub's config format with
small random weights, in a temporary Hugging Face cache. A notebook passes when every cell
runs without an error: behaviour that only the course's trained models have is guarded in
the notebooks, so a model without it must not crash them.

    python tests/gpt2_path.py 02 05          # run some notebooks, print each one's errors
    python tests/gpt2_path.py --full-size 02 # GPT-2 small's real size (a benchmark)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MODEL_LINE = re.compile(r'^MODEL_NAME = "[^"]*"', re.M)
# The stand-in used in CI: deep and wide enough that no notebook's layer or head choice
# fits only the course's models, small enough to run every notebook in a few minutes.
STANDIN_SIZE = dict(n_layer=4, n_embd=64, n_head=4)
FULL_SIZE = dict(n_layer=12, n_embd=768, n_head=12)


@dataclass
class Run:
    """What executing one notebook on the stand-in gave."""

    notebook: str
    seconds: float
    errors: list[str] = field(default_factory=list)


def notebooks_with_model_name() -> list[Path]:
    """The solution notebooks that have a ``MODEL_NAME = "..."`` line (the ones with a GPT-2 path)."""
    paths = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if any(MODEL_LINE.search(c.source) for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")]


def on_gpt2(path: Path) -> nbformat.NotebookNode:
    """The notebook with its ``MODEL_NAME`` set to ``"gpt2-small"`` and its outputs cleared."""
    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.source, n = MODEL_LINE.subn('MODEL_NAME = "gpt2-small"', cell.source)
            changed += n
    if changed != 1:
        raise ValueError(f"{path.name}: expected exactly one MODEL_NAME line, found {changed}")
    return nb


def run(path: Path, hf_home: Path, timeout: int = 900) -> Run:
    """Execute ``path`` on GPT-2 from the cache in ``hf_home``, offline; every cell runs even after an error."""
    from nbclient import NotebookClient

    nb = on_gpt2(path)
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "MI_COURSE_VIZ")}
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", MI_COURSE_VIZ="static")
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result = Run(path.stem, time.perf_counter() - start)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            if out.output_type == "error":
                result.errors.append(f"code cell {i} ({cell.get('id', '?')}): {out.ename}: {out.evalue[:300]}")
    return result


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from gpt2_standin import build_gpt2_standin

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook number prefixes, e.g. 02 05 (default: all with MODEL_NAME)")
    parser.add_argument("--full-size", action="store_true", help="GPT-2 small's real size instead of the small stand-in")
    args = parser.parse_args()
    paths = [p for p in notebooks_with_model_name() if not args.names or p.name[:2] in args.names]
    with tempfile.TemporaryDirectory(prefix="gpt2-standin-") as tmp:
        build_gpt2_standin(Path(tmp), **(FULL_SIZE if args.full_size else STANDIN_SIZE))
        failed = 0
        for path in paths:
            r = run(path, Path(tmp))
            failed += bool(r.errors)
            print(f"{r.notebook:28} {r.seconds:7.1f} s  {'ok' if not r.errors else f'{len(r.errors)} errors'}", flush=True)
            for err in r.errors:
                print(f"    {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
