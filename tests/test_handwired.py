"""handwired-induction does induction, and its ground-truth circuit is faithful and minimal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mi_course.circuits import Circuit, faithfulness, graph, run_with_edges_patched
from mi_course.handwired import LETTERS
from mi_course.models import ground_truth, load_model

HALF = 20


def repeated_letters(batch: int, seed: int, distinct: bool = True) -> torch.Tensor:
    """<bos>, HALF random letters (distinct within a sequence unless told), then the same again."""
    g = torch.Generator().manual_seed(seed)
    if distinct:
        first = torch.stack([torch.randperm(len(LETTERS), generator=g)[:HALF] + 1 for _ in range(batch)])
    else:
        first = torch.randint(1, len(LETTERS) + 1, (batch, HALF), generator=g)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), first, first], dim=1)


@pytest.fixture(scope="module")
def model():
    return load_model("handwired-induction")


@pytest.fixture(scope="module")
def task():
    """Clean and corrupted prompts (a different random first half, repeated) and the metric:
    the mean logit of the correct next token on the repeat."""
    clean, corrupted = repeated_letters(32, seed=11), repeated_letters(32, seed=12)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, HALF + 1 : -1].gather(-1, clean[:, HALF + 2 :, None]).mean()

    return clean, corrupted, metric


def test_predicts_the_repeated_half(model):
    tokens = repeated_letters(64, seed=1)
    logits = model(tokens)[:, HALF + 1 : -1]
    targets = tokens[:, HALF + 2 :]
    assert (logits.argmax(-1) == targets).float().mean() >= 0.99
    assert F.cross_entropy(logits.flatten(0, 1), targets.flatten()) < 0.01
    # The first half cannot be predicted: the loss there is at least that of a uniform guess
    # over the letters seen so far.
    first = model(tokens)[:, 2:HALF]
    assert F.cross_entropy(first.flatten(0, 1), tokens[:, 3 : HALF + 1].flatten()) > 1.0


def test_with_repeated_letters_it_copies_whenever_the_earlier_context_is_unambiguous(model):
    tokens = repeated_letters(64, seed=2, distinct=False)
    predictions = model(tokens).argmax(-1)
    hits, unambiguous = 0, 0
    for row, predicted in zip(tokens.tolist(), predictions.tolist()):
        for i in range(HALF + 1, 2 * HALF):
            followers = {row[j + 1] for j in range(1, i) if row[j] == row[i]}
            if len(followers) == 1:  # every earlier occurrence was followed by the same letter
                unambiguous += 1
                hits += predicted[i] == row[i + 1]
    assert unambiguous > 500 and hits / unambiguous >= 0.99


def test_the_heads_do_what_the_docstring_says(model):
    tokens = repeated_letters(8, seed=3)
    _, cache = model.run_with_cache(tokens)
    positions = torch.arange(1, 2 * HALF + 1)
    previous = cache["pattern", 0][:, 0, positions, positions - 1]
    assert previous.min() > 0.99
    repeat = torch.arange(HALF + 1, 2 * HALF + 1)
    induction = cache["pattern", 1][:, 0, repeat, repeat - HALF + 1]
    assert induction.min() > 0.99
    assert cache["pattern", 1][:, 1, :, 0].min() > 0.99  # the decoy attention sink


def test_ground_truth_is_faithful(model, task):
    clean, corrupted, metric = task
    circuit = ground_truth("handwired-induction")
    assert circuit.edges < graph(model).edges
    assert faithfulness(model, circuit, clean, corrupted, metric) >= 0.95


@pytest.mark.parametrize("edge", sorted(ground_truth("handwired-induction").edges))
def test_every_ground_truth_edge_is_needed(model, task, edge):
    clean, corrupted, metric = task
    without = Circuit.from_edges(ground_truth("handwired-induction").edges - {edge})
    assert faithfulness(model, without, clean, corrupted, metric) < 0.1


def test_edges_outside_the_circuit_change_nothing(model, task):
    clean, corrupted, _ = task
    outside = graph(model).edges - ground_truth("handwired-induction").edges
    assert torch.allclose(run_with_edges_patched(model, clean, corrupted, outside), model(clean), atol=1e-4)


def test_backup_model_has_twin_previous_token_heads_and_a_negative_head():
    """handwired-backup: L0H1 is a copy of L0H0; L1H1 attends like L1H0 and writes -3 where L1H0 writes +6."""
    from mi_course.circuits import PatchedMetric, knock_out
    from mi_course.handwired import backup_truth, build_backup, correct_logit, repeated_letters, unrelated_letters

    backup = build_backup()
    clean = repeated_letters(4, 8, seed=0)
    corrupted = unrelated_letters(clean, seed=1)
    assert backup.cfg.model_name == "handwired-backup"
    assert not any(torch.isin(c, k[1:]).any() for c, k in zip(corrupted, clean))  # no shared letter
    assert all(len(set(c[1:].tolist())) == 16 for c in corrupted)  # no repeat
    metric = correct_logit(clean)
    assert float(metric(backup(clean))) == pytest.approx(3.0, abs=1e-3) and float(metric(backup(corrupted))) == 0.0
    _, cache = backup.run_with_cache(clean)
    pattern0, pattern1 = cache["blocks.0.attn.hook_pattern"][0], cache["blocks.1.attn.hook_pattern"][0]
    assert torch.equal(pattern0[0], pattern0[1]) and torch.equal(pattern1[0], pattern1[1])
    score = PatchedMetric(backup, clean, corrupted, metric)
    edges = score.edges
    assert score(knock_out({"L0H0"}, edges)) == pytest.approx(1.0, abs=1e-3)  # the twin takes over
    assert score(knock_out({"L0H0", "L0H1"}, edges)) < 0.2  # both gone: induction is gone
    assert score(knock_out({"L1H1"}, edges)) == pytest.approx(2.0, abs=1e-3)  # the negative head costs half the logit
    truth = backup_truth()
    assert score(edges - truth.edges) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="too long"):
        unrelated_letters(repeated_letters(2, 10, seed=0), seed=1)
