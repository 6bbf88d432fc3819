"""Residual-stream decomposition and DLA against independent computations."""

from __future__ import annotations

import pytest
import torch

from mi_course.checks.nb01 import random_model
from mi_course.residual import (
    accumulated_logit_diff,
    accumulated_resid,
    at_pos,
    decompose_resid,
    direct_logit_attribution,
    direct_path_hooks,
    head_dla,
    head_outputs,
    layer_components,
    logit_diff,
    logit_diff_offset,
    remove_part_hook,
    top_components,
)

ATOL = 1e-4


@pytest.fixture(params=[dict(), dict(fold=True), dict(attn_only=True)], ids=["ln", "folded", "attn_only"])
def setup(request):
    model = random_model(0, **{"fold": False, **request.param})
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 50, (5, 12), generator=gen)
    answers = torch.randint(0, 50, (5,), generator=gen)
    wrong = (answers + 1 + torch.randint(0, 48, (5,), generator=gen)) % 50
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache, answers, wrong


@pytest.mark.parametrize("pos", [-1, 4, torch.tensor([11, 3, 7, 0, 9])], ids=["last", "int", "per_prompt"])
def test_parts_sum_to_final_residual(setup, pos):
    model, _, _, cache, *_ = setup
    parts, labels = decompose_resid(model, cache, pos)
    assert len(labels) == parts.shape[0] == 2 + 2 * (4 + 1 + (not model.cfg.attn_only))
    final = at_pos(cache["blocks.1.hook_resid_post"], pos)
    torch.testing.assert_close(parts.sum(0), final, atol=ATOL, rtol=0)


def test_layer_components_sum_to_final_residual(setup):
    model, _, _, cache, *_ = setup
    parts, labels = layer_components(model, cache)
    assert labels[:3] == ["embed", "pos_embed", "L0 attn"] and len(labels) == parts.shape[0]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=ATOL, rtol=0)


def test_remove_part_hook_edits_one_position():
    resid, part = torch.randn(3, 5, 8), torch.randn(3, 8)
    edited = remove_part_hook(part, 2)(resid)
    torch.testing.assert_close(edited[:, 2], resid[:, 2] - part)
    torch.testing.assert_close(edited[:, [0, 1, 3, 4]], resid[:, [0, 1, 3, 4]])


def test_head_outputs_match_hook_result(setup):
    model, tokens, *_ = setup
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(tokens)
    model.set_use_attn_result(False)
    for layer in range(2):
        torch.testing.assert_close(head_outputs(model, cache, layer), cache[f"blocks.{layer}.attn.hook_result"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos", [-1, torch.tensor([11, 3, 7, 0, 9])], ids=["last", "per_prompt"])
def test_dla_sums_to_logit_diff(setup, pos):
    model, _, logits, cache, answers, wrong = setup
    dla, _ = direct_logit_attribution(model, cache, answers, wrong, pos)
    total = dla.sum(0) + logit_diff_offset(model, answers, wrong)
    torch.testing.assert_close(total, logit_diff(logits, answers, wrong, pos), atol=ATOL, rtol=0)


def test_head_dla_is_the_effect_of_removing_the_head_from_the_final_residual(setup):
    """With the final LN scale frozen, subtracting a head's output from the final residual
    lowers the logit difference by exactly its DLA (computed here by the model's forward)."""
    model, tokens, logits, cache, answers, wrong = setup
    grid = head_dla(model, cache, answers, wrong)
    clean = logit_diff(logits, answers, wrong)
    for layer, head in [(0, 2), (1, 3)]:
        z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
        out = z @ model.W_O[layer, head]  # independent of head_outputs' einsum
        hooks = [
            ("blocks.1.hook_resid_post", lambda x, hook: x - out),
            ("ln_final.hook_scale", lambda s, hook: cache["ln_final.hook_scale"]),
        ]
        removed = logit_diff(model.run_with_hooks(tokens, fwd_hooks=hooks), answers, wrong)
        torch.testing.assert_close(clean - removed, grid[layer, head], atol=ATOL, rtol=0)


def test_direct_path_hooks_move_the_logit_difference_by_the_direct_effect_against_the_mean(setup):
    """Swapping a head's output for its batch mean in the final residual, scale frozen, changes the
    logit difference by its DLA minus the DLA of the mean output; no later layer reacts."""
    model, tokens, logits, cache, answers, wrong = setup
    clean = logit_diff(logits, answers, wrong)
    final_scale = cache["ln_final.hook_scale"][:, -1]
    direction = model.W_U[:, answers] - model.W_U[:, wrong]
    if model.cfg.normalization_type == "LN" and hasattr(model.ln_final, "w"):
        direction = direction * model.ln_final.w[:, None]
    for layer, head in [(0, 2), (1, 3)]:
        out = cache[f"blocks.{layer}.attn.hook_z"][:, -1, head] @ model.W_O[layer, head]
        change = out - out.mean(0)
        if model.cfg.normalization_type == "LN":
            change = change - change.mean(-1, keepdim=True)
        expected = ((change / final_scale) * direction.T).sum(-1)
        swapped = logit_diff(model.run_with_hooks(tokens, fwd_hooks=direct_path_hooks(model, cache, layer, head)), answers, wrong)
        torch.testing.assert_close(clean - swapped, expected, atol=ATOL, rtol=0)
    assert [name for name, _ in direct_path_hooks(model, cache, 0, 0)] == ["blocks.1.hook_resid_post", "ln_final.hook_scale"]


def test_head_dla_agrees_with_component_dla(setup):
    model, _, _, cache, answers, wrong = setup
    dla, labels = direct_logit_attribution(model, cache, answers, wrong)
    grid = head_dla(model, cache, answers, wrong)
    for layer in range(2):
        for head in range(4):
            torch.testing.assert_close(grid[layer, head], dla[labels.index(f"L{layer}H{head}")])


def test_accumulated_residual_ends_at_the_final_residual(setup):
    model, _, logits, cache, answers, wrong = setup
    resid, labels = accumulated_resid(model, cache)
    assert labels == ["embed", "after L0", "after L1"]
    torch.testing.assert_close(resid[-1], cache["blocks.1.hook_resid_post"][:, -1])
    torch.testing.assert_close(resid[0], (cache["hook_embed"] + cache["hook_pos_embed"])[:, -1])
    diffs, _ = accumulated_logit_diff(model, cache, answers, wrong)
    torch.testing.assert_close(diffs[-1], logit_diff(logits, answers, wrong), atol=ATOL, rtol=0)


def test_top_components():
    values = torch.tensor([[0.1, -3.0, 0.5], [2.0, 0.0, -0.2]])
    assert top_components(values, 3) == [(0, 1), (1, 0), (0, 2)]


def test_dla_plots_draw():
    from mi_course.viz import plot_dla, plot_running_logit_diff

    fig = plot_dla(torch.randn(2, 4), {"attn": torch.randn(2), "MLP": torch.randn(2)}, title="t")
    assert len(fig.axes) == 4  # two heatmaps and their colour bars
    fig = plot_running_logit_diff(torch.randn(3), ["embed", "after L0", "after L1"], final=1.0)
    assert len(fig.axes[0].lines) == 3
