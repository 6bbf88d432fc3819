"""Shared fixtures of the test suite (the offline guard is in the root conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Fixture notebooks are data for the grader tests, not notebooks to validate.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def gpt2_tokenizer_dir() -> Path | None:
    """../shared/fixtures/gpt2-tokenizer, or $MI_COURSE_GPT2_TOKENIZER; None if absent."""
    env = os.environ.get("MI_COURSE_GPT2_TOKENIZER")
    path = Path(env) if env else ROOT.parent / "shared" / "fixtures" / "gpt2-tokenizer"
    return path if (path / "vocab.json").exists() else None


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
