"""The zoo loader: shipped models load offline and fast; every kind of bad input gets a clear error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from packaging.requirements import Requirement
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer

import mi_course
from mi_course import models
from mi_course.circuits import Circuit
from mi_course.models import (
    MODEL_NAMES,
    ZOO,
    CorruptWeightsError,
    DeviceUnavailableError,
    GroundTruthUnknownError,
    MissingWeightsError,
    ModelOfflineError,
    UnknownModelError,
    load_from_directory,
    load_model,
    word_level_tokenizer,
)
from mi_course.training import save_model

from gpt2_standin import build_gpt2_standin

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SHIPPED = [name for name in ("attn-only-2l", "toy-lm") if (ZOO / name / "model.safetensors").exists()]


@pytest.fixture
def saved(tmp_path):
    """A tiny random model saved as a zoo folder, and the model itself."""
    tokenizer = word_level_tokenizer(["a", "b", "c", "d"])
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=8, n_ctx=12, d_head=4, n_heads=2, d_mlp=16, act_fn="gelu", d_vocab=5, normalization_type="LN", seed=3
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    directory = tmp_path / "tiny"
    save_model(model, tokenizer, directory, "# tiny\n")
    return directory, model


@pytest.mark.parametrize("name", ["handwired-induction", *SHIPPED])
def test_shipped_models_load_offline_with_a_working_tokenizer(name):
    load_model(name)  # the first call reads the weights from disk
    start = time.perf_counter()
    model = load_model(name)
    assert time.perf_counter() - start < 2.0
    assert isinstance(model, HookedTransformer) and not model.training
    ids = list(range(model.cfg.d_vocab - 3, model.cfg.d_vocab))  # ordinary tokens, not special ones
    tokens = model.to_tokens(model.to_string(torch.tensor(ids)))
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert tokens[0, 1:].tolist() == ids
    assert model.to_str_tokens(tokens[0])[0] == model.tokenizer.bos_token
    assert model(tokens).shape == (1, 4, model.cfg.d_vocab)


def test_every_call_returns_a_fresh_model():
    first = load_model("handwired-induction")
    with torch.no_grad():
        first.unembed.W_U.zero_()
    first.cfg.use_attn_result = True
    second = load_model("handwired-induction")
    assert second.unembed.W_U.abs().sum() > 0
    assert not second.cfg.use_attn_result


def test_the_package_exposes_the_loader():
    assert mi_course.load_model is load_model
    assert isinstance(mi_course.ground_truth("handwired-induction"), Circuit)


def test_loading_a_saved_folder_gives_the_same_model(saved):
    directory, original = saved
    loaded = load_from_directory(directory)
    tokens = loaded.to_tokens(["a b c d", "d d a"])
    assert torch.allclose(loaded(tokens), original(tokens), atol=1e-6)
    assert loaded.to_str_tokens("a b") == ["<bos>", "a", "b"]


def test_unknown_name_lists_the_models_and_suggests_the_closest():
    with pytest.raises(UnknownModelError) as err:
        load_model("attn_only_2l")
    assert "Did you mean 'attn-only-2l'?" in str(err.value)
    assert all(name in str(err.value) for name in MODEL_NAMES)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownModelError, match="gpt2-small"):
        load_model("gpt2")


def test_missing_folder_or_file_says_how_to_get_it_back(saved, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"scripts/train_nowhere\.py"):
        load_from_directory(tmp_path / "nowhere")
    directory, _ = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors is missing.*[Rr]einstall"):
        load_from_directory(directory)


def test_a_zoo_model_not_built_yet_gives_the_missing_weights_error(monkeypatch, tmp_path):
    monkeypatch.setattr("mi_course.models.ZOO", tmp_path)  # a checkout whose zoo is not built
    with pytest.raises(MissingWeightsError, match=r"train_toy_lm\.py"):
        load_model("toy-lm")


def test_corrupt_weight_file(saved):
    directory, _ = saved
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(CorruptWeightsError, match="not a valid safetensors file"):
        load_from_directory(directory)


def test_weights_that_do_not_match_the_config(saved):
    directory, _ = saved
    config = json.loads((directory / "config.json").read_text())
    config["model"]["d_model"] = 12
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptWeightsError, match=r"embed\.W_E has shape \(5, 8\), the config needs \(5, 12\)"):
        load_from_directory(directory)


def test_unreadable_config(saved):
    directory, _ = saved
    (directory / "config.json").write_text("{ not json")
    with pytest.raises(CorruptWeightsError, match="config.json"):
        load_from_directory(directory)


def test_cached_weights_are_reread_when_the_file_changes(saved, tmp_path):
    directory, model = saved
    load_from_directory(directory)
    with torch.no_grad():
        model.unembed.W_U.add_(1.0)
    save_model(model, model.tokenizer, directory, "# changed\n")
    assert torch.allclose(load_from_directory(directory).unembed.W_U, model.unembed.W_U)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu():
    with pytest.raises(DeviceUnavailableError, match="device='cpu'"):
        load_model("handwired-induction", device="cuda")


def test_nonsense_device():
    with pytest.raises(DeviceUnavailableError, match="not a torch device"):
        load_model("handwired-induction", device="gpu please")


# GPT-2 small from a Hugging Face cache. huggingface_hub and transformers read HF_HOME and
# HF_HUB_OFFLINE when they are imported, so each case runs in a fresh interpreter with its own
# environment. There, DNS look-ups and connections to anything but loopback fail at once and
# are counted, which shows how often the loader tries the network without timing it.
NETWORK_GUARD = """
import json, socket
ATTEMPTS = []
_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

def _blocked_getaddrinfo(host, *args, **kwargs):
    if (host.decode() if isinstance(host, bytes) else host) not in _LOOPBACK:
        ATTEMPTS.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "network blocked in tests")
    return _getaddrinfo(host, *args, **kwargs)

def _blocked_connect(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
        ATTEMPTS.append(str(address[0]))
        raise OSError("network blocked in tests")
    return _connect(self, address, *args)

socket.getaddrinfo, socket.socket.connect = _blocked_getaddrinfo, _blocked_connect
"""

LOAD_AND_REPORT_ERROR = """
from mi_course.models import load_model
try:
    load_model("gpt2-small")
    error = None
except Exception as err:
    chained = err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__)
    error = {"type": type(err).__name__, "message": str(err), "notes": getattr(err, "__notes__", []), "chained": chained}
print(json.dumps({"error": error, "attempts": ATTEMPTS}))
"""

HF_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def run_fresh(code: str, hf_home, *, offline: bool, cwd) -> dict:
    """Run NETWORK_GUARD + `code` in a new interpreter with HF_HOME=`hf_home`; the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES and "proxy" not in k.lower()}
    env["HF_HOME"] = str(hf_home)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    # cwd: TransformerLens takes a folder named "gpt2" in the working directory for the model.
    proc = subprocess.run([sys.executable, "-c", NETWORK_GUARD + code], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def copy_of_standin(gpt2_hf_home, tmp_path):
    """A copy of the stand-in's HF_HOME, and its snapshot folder, to damage."""
    hf_home = shutil.copytree(gpt2_hf_home, tmp_path / "hf-home")
    (snapshot,) = (hf_home / "hub" / "models--gpt2" / "snapshots").iterdir()
    return hf_home, snapshot


def test_the_gpt2_standin_is_laid_out_and_tokenizes_like_the_hub_gpt2(gpt2_hf_home, gpt2_tokenizer, tmp_path):
    repo = gpt2_hf_home / "hub" / "models--gpt2"
    snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text()
    config = json.loads((snapshot / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["vocab_size"]) == ("gpt2", ["GPT2LMHeadModel"], 50257)
    assert {"model.safetensors", "generation_config.json", "tokenizer.json", "vocab.json", "merges.txt"} <= {p.name for p in snapshot.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(snapshot)  # a folder: no hub involved
    text = " Mary and John met at 17:41, café <|endoftext|>  twice"
    assert tokenizer.encode(text) == gpt2_tokenizer.encode(text) and tokenizer.eos_token_id == 50256
    with pytest.raises(ValueError, match="divisible"):
        build_gpt2_standin(tmp_path, n_embd=64, n_head=5)


def test_gpt2_small_loads_from_the_cache_offline_and_computes_what_transformers_computes(gpt2_hf_home, tmp_path):
    code = """
import torch
from transformers import GPT2LMHeadModel
from mi_course.models import load_model
model = load_model("gpt2-small")
tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
reference = GPT2LMHeadModel.from_pretrained("gpt2", local_files_only=True).eval()
with torch.no_grad():
    ours = model(tokens).log_softmax(-1)
    theirs = reference(tokens).logits.log_softmax(-1)
print(json.dumps({
    "training": model.training, "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
    "names": model.to_tokens(" Mary John")[0].tolist(), "bos": model.tokenizer.bos_token_id,
    "max_diff": (ours - theirs).abs().max().item(),
    "shifted_diff": (ours[:, 1:] - theirs[:, :-1]).abs().max().item(),
    "attempts": ATTEMPTS,
}))
"""
    result = run_fresh(code, gpt2_hf_home, offline=True, cwd=tmp_path)
    assert not result["training"]
    assert (result["n_layers"], result["d_model"]) == (2, 64)  # the stand-in, not some other GPT-2
    assert result["names"] == [result["bos"], 5335, 1757]  # BOS, " Mary", " John" as GPT-2 tokenizes them
    assert result["max_diff"] < 1e-4
    assert result["shifted_diff"] > 100 * 1e-4  # the tolerance tells positions apart
    assert result["attempts"] == []


@pytest.mark.parametrize("cache", ["empty", "without weights"])
def test_gpt2_small_offline_and_not_cached_names_the_offline_models(cache, gpt2_hf_home, tmp_path):
    hf_home = tmp_path / "hf-home"
    if cache == "empty":
        hf_home.mkdir()
    else:
        hf_home, snapshot = copy_of_standin(gpt2_hf_home, tmp_path)
        (snapshot / "model.safetensors").unlink()
    result = run_fresh(LOAD_AND_REPORT_ERROR, hf_home, offline=True, cwd=tmp_path)
    error = result["error"]
    assert error is not None and error["type"] == ModelOfflineError.__name__
    assert "HF_HUB_OFFLINE" in error["message"] and str(hf_home / "hub") in error["message"]
    assert "\n" not in error["message"] and all(name in error["message"] for name in models.OFFLINE_MODELS)
    assert not error["chained"]  # one short error, not the hub client's traceback
    assert result["attempts"] == []


def test_gpt2_small_with_an_unreachable_hub_loads_from_the_cache_after_one_probe(gpt2_hf_home, tmp_path):
    code = """
from mi_course.models import load_model
model = load_model("gpt2-small")
print(json.dumps({"d_model": model.cfg.d_model, "names": model.to_str_tokens(" Mary John"), "attempts": ATTEMPTS}))
"""
    result = run_fresh(code, gpt2_hf_home, offline=False, cwd=tmp_path)
    assert result["d_model"] == 64 and result["names"] == ["<|endoftext|>", " Mary", " John"]
    # The loader's own probe, and huggingface_hub's one-off fetch of its agent registry (3 s
    # timeout, no retries); the hub's download retries would make dozens of attempts, minutes apart.
    assert 1 <= len(result["attempts"]) <= 2
    assert set(result["attempts"]) == {"huggingface.co"}


def test_gpt2_small_with_an_unreachable_hub_and_no_cache(tmp_path):
    (tmp_path / "hf-home").mkdir()
    result = run_fresh(LOAD_AND_REPORT_ERROR, tmp_path / "hf-home", offline=False, cwd=tmp_path)
    error = result["error"]
    assert error is not None and error["type"] == ModelOfflineError.__name__
    assert "cannot be reached" in error["message"] and all(name in error["message"] for name in models.OFFLINE_MODELS)
    assert 1 <= len(result["attempts"]) <= 2  # as above: no retries


@pytest.mark.parametrize(
    "damage, error_type, says",
    [
        ("architecture", "NotImplementedError", "NotAGPT2 is not currently supported"),
        ("weights", "SafetensorError", "header"),
    ],
)
def test_gpt2_small_failing_for_another_reason_keeps_its_error_and_names_the_versions(damage, error_type, says, gpt2_hf_home, tmp_path):
    hf_home, snapshot = copy_of_standin(gpt2_hf_home, tmp_path)
    if damage == "architecture":  # a config.json that TransformerLens cannot convert
        config = json.loads((snapshot / "config.json").read_text())
        (snapshot / "config.json").write_text(json.dumps({**config, "architectures": ["NotAGPT2"]}))
    else:
        (snapshot / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    error = run_fresh(LOAD_AND_REPORT_ERROR, hf_home, offline=True, cwd=tmp_path)["error"]
    assert error is not None and error["type"] == error_type and says in error["message"]
    assert error["notes"] == [models.supported_versions()]


def test_supported_versions_come_from_the_package_requirements(root):
    line = models.supported_versions()
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    (tl_range,) = [Requirement(r).specifier for r in pyproject["project"]["dependencies"] if Requirement(r).name == "transformer-lens"]
    assert f"transformer-lens {','.join(sorted(map(str, tl_range), reverse=True))} " in line
    assert f"this environment has transformer-lens {metadata.version('transformer-lens')} and transformers {metadata.version('transformers')}" in line
    assert "\n" not in line


def test_only_unreachable_hubs_count_as_network_errors():
    def raised_from(cause: BaseException) -> OSError:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise OSError("We couldn't connect to the hub") from inner
        except OSError as outer:
            return outer

    assert models._is_network_error(raised_from(socket.gaierror(socket.EAI_NONAME, "unknown host")))
    assert models._is_network_error(raised_from(ConnectionRefusedError()))
    assert models._is_network_error(raised_from(OSError(errno.ENETUNREACH, "Network is unreachable")))
    assert models._is_network_error(LocalEntryNotFoundError("not in the cache"))
    assert not models._is_network_error(raised_from(ValueError("bad config")))
    assert not models._is_network_error(FileNotFoundError(errno.ENOENT, "model.safetensors"))
    assert not models._is_network_error(AttributeError("'GPT2Config' object has no attribute 'n_inner'"))


PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


def test_the_hub_probe_connects_to_the_hub_or_to_the_proxy(monkeypatch):
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert not models._hub_reachable(timeout=1.0)  # the root conftest blocks every non-loopback socket
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert models._hub_reachable(timeout=1.0)
        monkeypatch.setenv("NO_PROXY", "huggingface.co")
        assert not models._hub_reachable(timeout=1.0)


def test_ground_truth_only_for_the_handwired_model():
    circuit = models.ground_truth("handwired-induction")
    assert "L1H0" in circuit and "logits" in circuit
    with pytest.raises(GroundTruthUnknownError, match="only 'handwired-induction'"):
        models.ground_truth("attn-only-2l")
    with pytest.raises(UnknownModelError):
        models.ground_truth("handwired")


def test_word_level_tokenizer_rejects_bad_vocabularies():
    with pytest.raises(ValueError, match="duplicates"):
        word_level_tokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="whitespace"):
        word_level_tokenizer(["a b"])


def test_zoo_folders_hold_the_four_files_and_nothing_unexpected():
    required = {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"}
    optional = {"training.json"}  # the training script's record, for re-writing the card
    for directory in ZOO.iterdir():
        if directory.is_dir() and directory.name != "__pycache__":
            names = {p.name for p in directory.iterdir() if not p.name.startswith(".")}
            assert required <= names <= required | optional, directory


def test_zoo_stays_under_20_mb():
    total = sum(p.stat().st_size for p in ZOO.rglob("*") if p.is_file())
    assert total < 20 * 2**20


def test_shipped_folder_copied_elsewhere_still_loads(tmp_path):
    if not SHIPPED:
        pytest.skip("no trained model shipped yet")
    copy = shutil.copytree(ZOO / SHIPPED[0], tmp_path / SHIPPED[0])
    tokens = torch.arange(1, 6)[None]
    assert torch.equal(load_from_directory(copy)(tokens), load_model(SHIPPED[0])(tokens))


def test_mystery_models_load_by_seed_and_only_by_seed():
    from mi_course import mystery

    model = load_model("mystery", seed=5)
    reference = mystery.make(5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(ValueError, match="needs the seed"):
        load_model("mystery")
    with pytest.raises(ValueError, match="not a family"):
        load_model("toy-lm", seed=1)
    with pytest.raises(GroundTruthUnknownError, match="mystery.ground_truth"):
        models.ground_truth("mystery")
