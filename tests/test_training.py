"""The training loop and save_model, on a tiny config for a few steps (so the code cannot rot)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course.models import load_from_directory, word_level_tokenizer
from mi_course.training import _lr_factor, next_token_loss, save_model, train

torch.set_num_threads(1)
WORDS = [f"w{i}" for i in range(11)]


def tiny_model(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=16, d_head=8, n_heads=2, d_mlp=32, act_fn="gelu", d_vocab=12, normalization_type="LN", seed=seed
    )
    return HookedTransformer(cfg, tokenizer=word_level_tokenizer(WORDS))


def counting_batches(step: int) -> torch.Tensor:
    """Sequences that count up from a random start (mod 11): easy to learn, deterministic per step."""
    generator = torch.Generator().manual_seed(step)
    start = torch.randint(0, 11, (16, 1), generator=generator)
    return torch.cat([torch.zeros(16, 1, dtype=torch.long), (start + torch.arange(12)) % 11 + 1], dim=1)


def test_loss_decreases():
    losses = train(tiny_model(), counting_batches, steps=60, lr=1e-2, warmup=5)
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_training_is_deterministic_given_the_seed():
    first = tiny_model(seed=1)
    second = tiny_model(seed=1)
    assert train(first, counting_batches, steps=5, seed=4) == train(second, counting_batches, steps=5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not first.training


def test_loss_mask_restricts_the_loss_to_the_chosen_positions():
    model = tiny_model()
    tokens = counting_batches(0)
    mask = torch.zeros(16, 12, dtype=torch.bool)
    mask[:, -1] = True
    logits = model(tokens)
    expected = F.cross_entropy(logits[:, -2], tokens[:, -1])
    assert torch.allclose(next_token_loss(logits, tokens, mask), expected)
    assert not torch.allclose(next_token_loss(logits, tokens), expected)
    losses = train(tiny_model(), counting_batches, steps=1, lr=0.0, loss_mask=lambda t: mask)
    assert losses[0] == pytest.approx(expected.item(), abs=1e-5)


def test_schedule_warms_up_then_decays_to_zero():
    factors = [_lr_factor(step, warmup=10, steps=100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] < 0.01


def test_save_then_load_gives_identical_logits(tmp_path):
    model = tiny_model()
    train(model, counting_batches, steps=3)
    save_model(model, model.tokenizer, tmp_path / "tiny", "# Tiny\nA test model.")
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "MODEL_CARD.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["model"]["d_model"] == 16 and config["tokenizer"]["bos_token"] == "<bos>"
    loaded = load_from_directory(tmp_path / "tiny")
    tokens = counting_batches(7)
    assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.to_str_tokens("w1 w2") == model.to_str_tokens("w1 w2") == ["<bos>", "w1", "w2"]


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        (lambda step: [[0, 1, 2]], "integer tensor of shape"),
        (lambda step: torch.zeros(2, 1, dtype=torch.long), "need 2 to n_ctx"),
        (lambda step: torch.zeros(2, 40, dtype=torch.long), "need 2 to n_ctx"),
        (lambda step: torch.full((2, 4), 12), "outside"),
    ],
)
def test_bad_batches_are_explained(batches, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_model(), batches, steps=1)


def test_bad_mask_and_steps_are_explained():
    with pytest.raises(ValueError, match="shape \\(batch, pos-1\\)"):
        train(tiny_model(), counting_batches, steps=1, loss_mask=lambda t: torch.ones_like(t, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no position"):
        train(tiny_model(), counting_batches, steps=1, loss_mask=lambda t: torch.zeros(16, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        train(tiny_model(), counting_batches, steps=0)
