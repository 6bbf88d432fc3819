"""Every test runs offline: no hub, and no socket may leave this machine.

The same guard is installed in the notebook kernels that nbval starts, through an IPython
startup file in a private IPYTHONDIR.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GUARD = '''
import socket as _socket

_connect = _socket.socket.connect

def _loopback_only(self, address, *args):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network access blocked in tests: tried to connect to {address!r}")
    return _connect(self, address, *args)

_socket.socket.connect = _loopback_only
'''

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
_ipython_dir = Path(tempfile.mkdtemp(prefix="mi-course-ipython-"))
(_ipython_dir / "profile_default" / "startup").mkdir(parents=True)
(_ipython_dir / "profile_default" / "startup" / "00-offline.py").write_text(GUARD)
os.environ["IPYTHONDIR"] = str(_ipython_dir)
exec(GUARD)


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
