"""Shared fixtures of the test suite (the offline guard is in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpt2_standin import build_gpt2_standin, gpt2_tokenizer_dir

ROOT = Path(__file__).resolve().parent.parent

# Fixture notebooks are data for the grader tests, not notebooks to validate.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's tokenizer from the shared fixture (skips when the fixture is absent)."""
    path = gpt2_tokenizer_dir()
    if path is None:
        pytest.skip("GPT-2 tokenizer fixture not found at ../shared/fixtures/gpt2-tokenizer (and the hub is offline)")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def gpt2_hf_home(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds a small random-weight stand-in for "gpt2" (see tests/gpt2_standin.py).

    Skips when the GPT-2 tokenizer fixture is absent.
    """
    if gpt2_tokenizer_dir() is None:
        pytest.skip("GPT-2 tokenizer fixture not found at ../shared/fixtures/gpt2-tokenizer (set MI_COURSE_GPT2_TOKENIZER)")
    hf_home = tmp_path_factory.mktemp("gpt2-hf-home")
    build_gpt2_standin(hf_home)
    return hf_home


@pytest.fixture(autouse=True)
def _torch_global_state_restored():
    """Each test starts with gradients on and leaves torch's grad mode and thread count as it found them
    (code that runs notebook cells in-process, or a failing test, must not change later tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_grad_enabled(True)
    yield
    torch.set_grad_enabled(True)
    torch.set_num_threads(threads)
