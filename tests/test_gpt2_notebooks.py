"""Every notebook's ``MODEL_NAME = "gpt2-small"`` path runs end to end, offline.

GPT-2 comes from a temporary Hugging Face cache holding a stand-in (`gpt2_standin`): GPT-2's
real tokenizer and the hub's config format, with small random weights. A random model has
none of the behaviours the notebooks study, so this checks that the GPT-2 path never crashes:
cells that pick components by behaviour fall back and say so, and asserts about the course's
own models are guarded. It does not check GPT-2's numbers (the notebooks print the published
figures beside the measured ones for that).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_path import STANDIN_SIZE, notebooks_with_model_name, run  # noqa: E402
from gpt2_standin import build_gpt2_standin, gpt2_tokenizer_dir  # noqa: E402

NOTEBOOKS = notebooks_with_model_name()
# 00 studies the hand-wired model and 04 the hand-wired model and toy-lm's full edge graph by
# design; every other notebook has a GPT-2 path. A new notebook without one fails here.
WITHOUT_GPT2_PATH = {"00_mechanistic", "04_edge_patching", "09_find_the_circuit"}  # 09: the mystery models are the subject


@pytest.fixture(scope="module")
def standin_home(tmp_path_factory) -> Path:
    if gpt2_tokenizer_dir() is None:
        pytest.skip("GPT-2 tokenizer fixture not found at ../shared/fixtures/gpt2-tokenizer (and the hub is offline)")
    home = tmp_path_factory.mktemp("hf-home")
    build_gpt2_standin(home, **STANDIN_SIZE)
    return home


def test_every_other_notebook_has_a_gpt2_path():
    course = {p.stem for p in Path(__file__).resolve().parent.parent.joinpath("solutions").glob("[0-9][0-9]_*.ipynb")}
    assert course - {p.stem for p in NOTEBOOKS} == WITHOUT_GPT2_PATH


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_gpt2_standin(notebook: Path, standin_home: Path):
    result = run(notebook, standin_home)
    assert not result.errors, f"{notebook.name} on the GPT-2 stand-in:\n" + "\n".join(result.errors)
