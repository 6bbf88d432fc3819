"""The zoo loader: shipped models load offline and fast; every kind of bad input gets a clear error."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

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


def test_gpt2_small_offline_names_the_offline_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelOfflineError) as err:
        load_model("gpt2-small")
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "\n" not in message
    assert all(name in message for name in models.OFFLINE_MODELS)


def test_gpt2_small_with_an_unreachable_hub(monkeypatch):
    # The test harness blocks sockets: the download fails and must become the same short error.
    monkeypatch.setattr(models, "_hub_offline", lambda: False)
    with pytest.raises(ModelOfflineError, match="could not be reached") as err:
        load_model("gpt2-small")
    assert err.value.__cause__ is None and err.value.__suppress_context__


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
