"""toy-lm's behaviour on held-out data (seeds never used in training), and its training script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mi_course import grammar, load_model
from mi_course.models import ZOO, load_from_directory
from mi_course.tasks import SVA_VARIANTS, make_task
from mi_course.training import next_token_loss

# Training batches use grammar seeds >= 1e6 (scripts/train_toy_lm.py), tasks a separate stream.
HELD_OUT = 424242


@pytest.fixture(scope="module")
def model():
    return load_model("toy-lm")


def test_ioi(model):
    task = make_task("ioi", model, n=200, seed=HELD_OUT)
    preferred = task.accuracy(task.logits(model))
    print(f"IOI logit difference {task.clean_value:.2f}, IO preferred {preferred:.1%}, ABC {task.corrupted_value:.2f}")
    assert task.clean_value >= 3 and preferred >= 0.95
    assert abs(task.corrupted_value) < 1  # with three new names neither answer is favoured


def test_greater_than(model):
    task = make_task("greater_than", model, n=200, seed=HELD_OUT)
    print(f"greater-than probability difference {task.clean_value:.3f} (01-corrupted {task.corrupted_value:.3f})")
    assert task.clean_value >= 0.7
    assert abs(task.corrupted_value) < 0.2  # start year 01: every year is later, none favoured over YY


@pytest.mark.parametrize("variant", SVA_VARIANTS)
def test_subject_verb_agreement(model, variant):
    task = make_task("sva", model, n=200, seed=HELD_OUT, variant=variant)
    correct = task.per_prompt_metric(task.logits(model)) > 0
    mismatch = torch.tensor(task.info["attractor_mismatch"])
    on_mismatch = correct[mismatch].float().mean().item() if mismatch.any() else float("nan")
    print(f"SVA {variant}: accuracy {correct.float().mean():.1%}, with a mismatched attractor {on_mismatch:.1%}, logit diff {task.clean_value:.2f}")
    assert correct.float().mean() >= 0.95
    if mismatch.any():
        assert on_mismatch >= 0.9


def test_induction(model):
    task = make_task("induction", model, n=100, seed=HELD_OUT)
    print(f"induction: log-prob on the repeat {task.clean_value:.3f}, corrupted first half {task.corrupted_value:.3f}")
    assert task.clean_value > -0.2 and task.corrupted_value < task.clean_value - 3


def test_held_out_loss_is_close_to_the_grammar_entropy(model):
    data = grammar.sample_tokens_with_labels(300, seed=HELD_OUT, n_ctx=model.cfg.n_ctx)
    with torch.no_grad():
        loss = next_token_loss(model(data.tokens), data.tokens).item()
    entropy = data.entropy[:, 1:].mean().item()
    print(f"held-out loss {loss:.3f} nats/token, grammar entropy {entropy:.3f} nats/token")
    # A model cannot beat the entropy (beyond sampling noise): a loss below it means a bug in the labels.
    assert entropy - 0.02 <= loss <= entropy + 0.05


def test_weights_are_small_and_the_card_is_complete():
    folder = ZOO / "toy-lm"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 6e6
    card = (folder / "MODEL_CARD.md").read_text()
    for needed in ("IOI logit difference", "greater-than", "grammar entropy", "Training time", "seed"):
        assert needed in card


def test_training_script_runs_a_tiny_config(tmp_path, root):
    out = tmp_path / "toy"
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "train_toy_lm.py"), "--tiny", "--steps", "3", "--batch", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    tiny = load_from_directory(out)
    assert tiny.cfg.n_layers == 1 and tiny.cfg.d_vocab == len(grammar.vocabulary())
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    assert "IOI logit difference" in (out / "MODEL_CARD.md").read_text()
