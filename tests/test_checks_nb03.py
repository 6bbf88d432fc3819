"""Every check of notebook 03 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import patching
from mi_course.checks import nb03
from mi_course.checks.core import CheckFailed


@pytest.fixture(scope="module")
def example():
    pair = nb03.random_pair(11)
    pair.pop("gen")
    return pair


def fails_with(check, learner, *args, hint: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args)
    assert hint in err.value.hint, err.value.hint


# 03.1


def test_normalise():
    args = (torch.tensor([3.0, 1.0, 0.5]), 4.0, 0.5)
    nb03.check_normalise(lambda value, clean_value, corrupted_value: (value - corrupted_value) / (clean_value - corrupted_value), *args)
    nb03.check_normalise(lambda value, clean_value, corrupted_value: 1 - (clean_value - value) / (clean_value - corrupted_value), *args)
    fails_with(nb03.check_normalise, lambda value, clean_value, corrupted_value: (value - clean_value) / (corrupted_value - clean_value), *args, hint="swapped")
    fails_with(nb03.check_normalise, lambda value, clean_value, corrupted_value: value / clean_value, *args, hint="clean value alone")
    fails_with(nb03.check_normalise, lambda value, clean_value, corrupted_value: (value - corrupted_value) / clean_value, *args, hint="denominator")


def test_normalise_not_implemented():
    def stub(value, clean_value, corrupted_value):
        raise NotImplementedError("hint")

    fails_with(nb03.check_normalise, stub, 1.0, 2.0, 0.0, hint="not implemented")


# 03.2


def restore_reference(clean_activation, pos):
    def hook(activation, hook):
        activation = activation.clone()
        activation[:, pos] = clean_activation[:, pos]
        return activation

    return hook


def restore_other(clean_activation, pos):
    def hook(activation, hook):  # a mask and torch.where, on a new tensor
        mask = torch.zeros(activation.shape[1], dtype=torch.bool)
        mask[pos] = True
        return torch.where(mask[None, :, None], clean_activation, activation)

    return hook


def restore_in_place(clean_activation, pos):
    def hook(activation, hook):  # right values, but the exercise asks for a copy
        activation[:, pos] = clean_activation[:, pos]
        return activation

    return hook


def test_restore_hook(example):
    args = (example["model"], example["clean_tokens"], example["corrupted_tokens"], 1, 3)
    nb03.check_restore_hook(restore_reference, *args)
    nb03.check_restore_hook(restore_other, *args)
    fails_with(nb03.check_restore_hook, lambda clean_activation, pos: (lambda activation, hook: clean_activation), *args, hint="every position")

    def added(clean_activation, pos):
        def hook(activation, hook):
            activation = activation.clone()
            activation[:, pos] = activation[:, pos] + clean_activation[:, pos]
            return activation
        return hook

    def copy_not_returned(clean_activation, pos):
        def hook(activation, hook):
            activation = activation.clone()
            activation[:, pos] = clean_activation[:, pos]
        return hook

    fails_with(nb03.check_restore_hook, added, *args, hint="added the clean activation")
    fails_with(nb03.check_restore_hook, copy_not_returned, *args, hint="return the edited tensor")
    fails_with(nb03.check_restore_hook, restore_in_place, *args, hint="overwrites the activation it receives in place")


# 03.3


def by_hand_reference(model, clean_tokens, corrupted_tokens, metric, layer, pos):
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(clean_tokens, names_filter=name)
    logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, restore_reference(cache[name], pos))])
    return metric(logits).item()


def by_hand_other(model, clean_tokens, corrupted_tokens, metric, layer, pos):
    stored = {}

    def save(act, hook):
        stored["clean"] = act[:, pos].clone()

    def write(act, hook):
        act[:, pos] = stored["clean"]

    name = f"blocks.{layer}.hook_resid_pre"
    model.run_with_hooks(clean_tokens, fwd_hooks=[(name, save)])
    return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, write)]))


def test_patch_resid_by_hand(example):
    args = (example["model"], example["clean_tokens"], example["corrupted_tokens"], example["metric"], 0, 4)
    nb03.check_patch_resid_by_hand(by_hand_reference, *args)
    nb03.check_patch_resid_by_hand(by_hand_other, *args)

    def clean_input(model, clean_tokens, corrupted_tokens, metric, layer, pos):
        return by_hand_reference(model, clean_tokens, clean_tokens, metric, layer, pos)

    def noising(model, clean_tokens, corrupted_tokens, metric, layer, pos):
        return by_hand_reference(model, corrupted_tokens, clean_tokens, metric, layer, pos)

    def corrupted_source(model, clean_tokens, corrupted_tokens, metric, layer, pos):
        return by_hand_reference(model, corrupted_tokens, corrupted_tokens, metric, layer, pos)

    def resid_post(model, clean_tokens, corrupted_tokens, metric, layer, pos):
        name = f"blocks.{layer}.hook_resid_post"
        _, cache = model.run_with_cache(clean_tokens, names_filter=name)
        return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, restore_reference(cache[name], pos))])).item()

    fails_with(nb03.check_patch_resid_by_hand, clean_input, *args, hint="ran the clean input and patched clean activations")
    fails_with(nb03.check_patch_resid_by_hand, noising, *args, hint="that is noising")
    fails_with(nb03.check_patch_resid_by_hand, corrupted_source, *args, hint="corrupted run's metric")
    fails_with(nb03.check_patch_resid_by_hand, resid_post, *args, hint="hook_resid_post")


# 03.4


def test_important_cells():
    grid = torch.tensor([[0.0, 0.5, -0.7, 0.1, 0.0, 0.0], [0.9, 0.0, 0.0, 0.2, 0.45, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.8]])
    nb03.check_important_cells(lambda results, threshold: [tuple(c) for c in (results >= threshold).nonzero().tolist()], grid, 0.4)
    nb03.check_important_cells(  # a tensor of indices in another order is fine too
        lambda results, threshold: torch.stack(torch.where(results >= threshold), dim=1).flip(0), grid, 0.4
    )
    nb03.check_important_cells(
        lambda results, threshold: {(l, p) for l in range(results.shape[0]) for p in range(results.shape[1]) if results[l, p] >= threshold}, grid, 0.4
    )
    fails_with(nb03.check_important_cells, lambda results, threshold: (results.abs() >= threshold).nonzero().tolist(), grid, 0.4, hint="negative")
    fails_with(nb03.check_important_cells, lambda results, threshold: (results.T >= threshold).nonzero().tolist(), grid, 0.4, hint="(layer, position) pairs")
    fails_with(nb03.check_important_cells, lambda results, threshold: ((results >= threshold).nonzero() - torch.tensor([0, 1])).tolist(), grid, 0.4, hint="off by one")


# 03.5


def ablated_reference(z, head, mode, index=None):
    out = z.clone()
    if mode == "mean":
        out[:, :, head] = z[:, :, head].mean(0, keepdim=True)
    else:
        out[:, :, head] = z[index, :, head]
    return out


def ablated_other(z, head, mode, index=None):
    source = z.mean(0).expand_as(z) if mode == "mean" else z[index]
    keep = torch.arange(z.shape[2]) != head
    return torch.where(keep[None, None, :, None], z, source)


def test_ablated_z(example):
    model, tokens = example["model"], example["clean_tokens"]
    _, cache = model.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"]
    nb03.check_ablated_z(ablated_reference, z, 1)
    nb03.check_ablated_z(ablated_other, z, 1)

    def zero(z, head, mode, index=None):
        out = z.clone()
        out[:, :, head] = 0
        return out if mode == "mean" else ablated_reference(z, head, mode, index)

    def over_positions(z, head, mode, index=None):
        out = z.clone()
        out[:, :, head] = z[:, :, head].mean(1, keepdim=True)
        return out if mode == "mean" else ablated_reference(z, head, mode, index)

    def all_heads(z, head, mode, index=None):
        return z.mean(0, keepdim=True).expand_as(z) if mode == "mean" else z[index]

    def no_resample(z, head, mode, index=None):
        return ablated_reference(z, head, mode, index) if mode == "mean" else z

    fails_with(nb03.check_ablated_z, zero, z, 1, hint="zero instead of mean")
    fails_with(nb03.check_ablated_z, over_positions, z, 1, hint="averaged over positions")
    fails_with(nb03.check_ablated_z, all_heads, z, 1, hint="every head")
    fails_with(nb03.check_ablated_z, no_resample, z, 1, hint="left the head unchanged")

    def in_place(z, head, mode, index=None):  # right values, but the exercise asks for a copy
        z[:, :, head] = z[:, :, head].mean(0, keepdim=True) if mode == "mean" else z[index, :, head].clone()
        return z

    before = z.clone()
    fails_with(nb03.check_ablated_z, in_place, z, 1, hint="changed `z` in place")
    assert torch.equal(z, before), "the learner got a copy of the notebook's tensor"


def test_ablated_z_matches_package(example):
    """The reference ablations give the package's ablation_sweep numbers."""
    model, tokens, metric = example["model"], example["clean_tokens"], example["metric"]
    for mode in ("mean", "resample"):
        sweep = patching.ablation_sweep(model, tokens, metric, "z", ("layer", "head"), mode=mode, progress=False)
        index = patching.resample_index(tokens.shape[0], seed=0)
        hook = lambda z, hook: nb03._ablated(z, 2, mode, index)
        value = metric(model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", hook)]))
        assert torch.isclose(value, sweep[1, 2], atol=1e-4)


def test_plot_patching():
    """The notebook's heatmap helper: panels side by side for heads, stacked for wide position grids."""
    from mi_course import viz

    heads = viz.plot_patching({"a": torch.rand(4, 4), "b": torch.rand(4, 4)}, xlabel="head")
    assert len([ax for ax in heads.axes if ax.get_title()]) == 2
    wide = viz.plot_patching({"denoising": torch.randn(4, 15), "noising": torch.randn(4, 15)}, [f"t{i}" for i in range(15)])
    panels = [ax for ax in wide.axes if ax.get_title()]
    assert panels[0].get_position().y0 > panels[1].get_position().y0  # stacked
    assert [t.get_text() for t in panels[0].get_xticklabels()][:2] == ["t0", "t1"]


# ---------------------------------------------------------------- pass rates over many draws (the checks without a model)

from test_checks_core import assert_never_passes  # noqa: E402

NORMALISE = (torch.tensor([3.0, 1.0, 0.5]), 4.0, 0.5)
GRID = (torch.tensor([[0.0, 0.5, -0.7, 0.1, 0.0, 0.0], [0.9, 0.0, 0.0, 0.2, 0.45, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.8]]), 0.4)
Z5 = (torch.randn(5, 4, 3, 2, generator=torch.Generator().manual_seed(3)), 1)


def _one_per_layer(results, threshold):
    best = results.max(dim=1)
    return [(layer, int(pos)) for layer, (value, pos) in enumerate(zip(best.values, best.indices)) if value >= threshold]


def _ablated_other_head(z, head, mode, index=None):
    return ablated_reference(z, (head + 1) % z.shape[2], mode, index)


def _ablated_in_place(z, head, mode, index=None):
    z[:, :, head] = z[:, :, head].mean(0, keepdim=True) if mode == "mean" else z[index, :, head].clone()
    return z


@pytest.mark.parametrize(
    "check, wrong, args, hint",
    [
        (nb03.check_normalise, lambda value, clean_value, corrupted_value: (value - clean_value) / (corrupted_value - clean_value), NORMALISE, "swapped"),
        (nb03.check_normalise, lambda value, clean_value, corrupted_value: value / clean_value, NORMALISE, "clean value alone"),
        (nb03.check_normalise, lambda value, clean_value, corrupted_value: (value - corrupted_value) / clean_value, NORMALISE, "denominator"),
        (nb03.check_normalise, lambda value, clean_value, corrupted_value: abs(value - corrupted_value) / abs(clean_value - corrupted_value), NORMALISE, "compute (value - corrupted_value)"),
        (nb03.check_important_cells, lambda results, threshold: (results.abs() >= threshold).nonzero().tolist(), GRID, "negative"),
        (nb03.check_important_cells, lambda results, threshold: (results.T >= threshold).nonzero().tolist(), GRID, "(layer, position) pairs"),
        (nb03.check_important_cells, lambda results, threshold: ((results >= threshold).nonzero() - torch.tensor([0, 1])).tolist(), GRID, "off by one"),
        (nb03.check_important_cells, lambda results, threshold: (results > threshold).nonzero().tolist(), GRID, "exactly at the threshold"),
        (nb03.check_important_cells, _one_per_layer, GRID, "one cell per layer"),
        (nb03.check_important_cells, lambda results, threshold: (results >= threshold + 0.01).nonzero().tolist(), GRID, None),
        (nb03.check_ablated_z, _ablated_in_place, Z5, "changed `z` in place"),
        (nb03.check_ablated_z, _ablated_other_head, Z5, None),
        (nb03.check_ablated_z, lambda z, head, mode, index=None: ablated_reference(z, head, mode, index.argsort() if index is not None else None), Z5, None),
        (nb03.check_ablated_z, lambda z, head, mode, index=None: ablated_reference(z, head, "mean", None), Z5, None),
    ],
)
def test_wrong_answers_pass_in_no_draw(check, wrong, args, hint):
    assert_never_passes(check, wrong, *args, hint=hint)


# ---------------------------------------------------------------- the checks that run a model: every fresh case separates every mistake

from mi_course.checks.core import separates  # noqa: E402


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (nb03._restore_case, nb03._restore_reference, nb03._RESTORE_MISTAKES),
        (lambda seed: nb03._by_hand_case(seed, 0), nb03._by_hand, nb03._BY_HAND_MISTAKES),
        (lambda seed: nb03._by_hand_case(seed, 1), nb03._by_hand, nb03._BY_HAND_MISTAKES),
    ],
    ids=["03.2", "03.3-layer0", "03.3-layer1"],
)
def test_fresh_cases_separate_every_mistake(draw, reference, mistakes, request):
    pairwise = not request.node.callspec.id.endswith("layer1")  # two of 03.3's mistakes agree in the last layer
    for seed in range(3):
        case = nb03.separating_case(draw, reference, mistakes.values(), seed, pairwise=pairwise)
        assert separates(case, reference, mistakes.values(), pairwise=pairwise)
        assert abs(nb03._by_hand(**case) - nb03._package(**case)) < 1e-4 if "metric" in case else True
