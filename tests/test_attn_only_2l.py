"""attn-only-2l learned induction: checked on held-out repeated random tokens (fresh seeds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mi_course.models import ZOO, load_model

pytestmark = pytest.mark.skipif(
    not (ZOO / "attn-only-2l" / "model.safetensors").exists(), reason="run scripts/train_attn_only_2l.py first"
)
torch.set_num_threads(1)
HALF = 25


@pytest.fixture(scope="module")
def model():
    return load_model("attn-only-2l")


@pytest.fixture(scope="module")
def tokens(model):
    """<bos>, HALF random tokens, the same HALF tokens again (seeds not used in training)."""
    g = torch.Generator().manual_seed(987_654)
    first = torch.randint(1, model.cfg.d_vocab, (200, HALF), generator=g)
    return torch.cat([torch.zeros(200, 1, dtype=torch.long), first, first], dim=1)


def half_losses(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """Mean loss predicting tokens 2..HALF (first half) and HALF+2..2*HALF (the repeat)."""
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return losses[:, 1:HALF].mean().item(), losses[:, HALF + 1 :].mean().item()


def head_scores(model, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: attention to the previous token (layer 0), and on the repeat, attention to the
    token after the earlier occurrence of the current token (layer 1)."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    positions = torch.arange(1, 2 * HALF + 1)
    previous = cache["pattern", 0][:, :, positions, positions - 1].mean(dim=(0, 2))
    repeat = torch.arange(HALF + 1, 2 * HALF + 1)
    induction = cache["pattern", 1][:, :, repeat, repeat - HALF + 1].mean(dim=(0, 2))
    return previous, induction


def test_repeat_is_far_easier_than_the_first_half(model, tokens):
    first, repeat = half_losses(model(tokens), tokens)
    assert first - repeat >= 3.0


def test_repeat_loss_is_below_half_a_nat(model, tokens):
    _, repeat = half_losses(model(tokens), tokens)
    assert repeat < 0.5


def test_has_a_previous_token_head_and_an_induction_head(model, tokens):
    previous, induction = head_scores(model, tokens)
    assert previous.max() >= 0.5
    assert induction.max() >= 0.5


def test_mean_ablating_the_induction_heads_breaks_the_repeat(model, tokens):
    _, induction = head_scores(model, tokens)
    heads = [h for h in range(model.cfg.n_heads) if induction[h] >= 0.3]

    def mean_ablate(z, hook):
        z[:, :, heads] = z[:, :, heads].mean(dim=0, keepdim=True)
        return z

    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", mean_ablate)])
    _, repeat = half_losses(model(tokens), tokens)
    _, repeat_ablated = half_losses(ablated, tokens)
    assert repeat_ablated - repeat >= 2.0


def test_the_induction_does_not_depend_on_a_fixed_period(model):
    """A span copied at a distance and length the test picks, inside random tokens."""
    g = torch.Generator().manual_seed(4242)
    tokens = torch.randint(1, model.cfg.d_vocab, (100, 63), generator=g)
    tokens[:, 40:52] = tokens[:, 7:19]  # period 33, length 12
    tokens = torch.cat([torch.zeros(100, 1, dtype=torch.long), tokens], dim=1)
    losses = F.cross_entropy(model(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    # With <bos> first, positions 42..52 hold copies of 9..19 that follow a copied token;
    # losses[:, p] is the loss of predicting position p + 1.
    assert losses[:, 41:52].mean() < 1.0 < losses[:, 20:40].mean()


def _found_heads(model, tokens):
    """The strongest previous-token head (layer 0) and the induction heads (layer 1, score >= 0.3), strongest first."""
    previous, induction_scores = head_scores(model, tokens)
    heads = sorted((h for h in range(model.cfg.n_heads) if induction_scores[h] >= 0.3), key=lambda h: -induction_scores[h])
    return (0, int(previous.argmax())), [(1, h) for h in heads]


def test_per_head_ablation_needs_the_previous_token_head_but_no_single_induction_head(model, tokens):
    """Mean and resample ablation of each head alone (kept share: 1 = clean, 0 = first-half loss)."""
    from mi_course import induction
    from mi_course.patching import ablation_sweep

    tokens = tokens[:64]
    prev, ind = _found_heads(model, tokens)
    first, clean = half_losses(model(tokens), tokens)
    metric = induction.repeat_loss_metric(tokens, HALF)
    for mode in ("mean", "resample"):
        kept = induction.kept_share(clean, ablation_sweep(model, tokens, metric, "z", by=("layer", "head"), mode=mode, progress=False), first)
        assert kept[prev] < 0.2
        assert len(ind) >= 2 and min(kept[head] for head in ind) > 0.75  # they back each other up
    together = induction.repeat_loss(model, tokens, HALF, induction.ablation_hooks(ind, "mean"))
    assert induction.kept_share(clean, together, first) < 0.2


def test_the_previous_token_head_feeds_the_induction_head_through_its_keys(model, tokens):
    from mi_course import induction

    tokens = tokens[:64]
    prev, ind = _found_heads(model, tokens)
    first, _ = half_losses(model(tokens), tokens)
    kept = induction.input_patch_kept(model, tokens, tokens.roll(1, dims=0), HALF, [prev], ind[0], first)
    assert kept["k"] < 0.5 and kept["q"] > 0.8 and kept["v"] > 0.9
