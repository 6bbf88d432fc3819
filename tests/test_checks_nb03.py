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


def by_hand_reference(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
    name = f"blocks.{layer}.hook_resid_pre"
    base, source = (corrupted_tokens, clean_tokens) if direction == "denoising" else (clean_tokens, corrupted_tokens)
    _, cache = model.run_with_cache(source, names_filter=name)

    def hook(activation, hook):
        activation = activation.clone()
        activation[:, pos] = cache[name][:, pos]
        return activation

    return metric(model.run_with_hooks(base, fwd_hooks=[(name, hook)])).item()


def by_hand_other(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
    """Save one position with a hook instead of run_with_cache, write it in place, return a tensor."""
    stored = {}
    runs = [clean_tokens, corrupted_tokens] if direction == "denoising" else [corrupted_tokens, clean_tokens]

    def save(act, hook):
        stored["value"] = act[:, pos].clone()

    def write(act, hook):
        act[:, pos] = stored["value"]

    name = f"blocks.{layer}.hook_resid_pre"
    model.run_with_hooks(runs[0], fwd_hooks=[(name, save)])
    return metric(model.run_with_hooks(runs[1], fwd_hooks=[(name, write)]))


def test_patch_resid_by_hand(example):
    args = (example["model"], example["clean_tokens"], example["corrupted_tokens"], example["metric"], 0, 4)
    nb03.check_patch_resid_by_hand(by_hand_reference, *args)
    nb03.check_patch_resid_by_hand(by_hand_other, *args)

    def every_position(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
        source = clean_tokens if direction == "denoising" else corrupted_tokens
        return metric(model(source)).item()

    def swapped(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
        return by_hand_reference(model, clean_tokens, corrupted_tokens, metric, layer, pos, "noising" if direction == "denoising" else "denoising")

    def from_base(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
        base = corrupted_tokens if direction == "denoising" else clean_tokens
        return by_hand_reference(model, base, base, metric, layer, pos)

    def resid_post(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
        name = f"blocks.{layer}.hook_resid_post"
        base, source = (corrupted_tokens, clean_tokens) if direction == "denoising" else (clean_tokens, corrupted_tokens)
        _, cache = model.run_with_cache(source, names_filter=name)
        return metric(model.run_with_hooks(base, fwd_hooks=[(name, lambda act, hook: torch.cat([act[:, :pos], cache[name][:, pos:pos + 1], act[:, pos + 1:]], 1))])).item()

    def denoising_only(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising"):
        return by_hand_reference(model, clean_tokens, corrupted_tokens, metric, layer, pos)

    fails_with(nb03.check_patch_resid_by_hand, every_position, *args, hint="patched every position")
    fails_with(nb03.check_patch_resid_by_hand, swapped, *args, hint="directions are swapped")
    fails_with(nb03.check_patch_resid_by_hand, from_base, *args, hint="unpatched run's metric")
    fails_with(nb03.check_patch_resid_by_hand, resid_post, *args, hint="hook_resid_post")
    fails_with(nb03.check_patch_resid_by_hand, denoising_only, *args, hint="cache blocks.{layer}.hook_resid_pre on the source prompts")


# 03.2 and 03.3 (toy-lm: the only model of the course that does IOI)


@pytest.fixture(scope="module")
def toy_ioi():
    from mi_course import load_model
    from mi_course.tasks import make_task

    model = load_model("toy-lm")
    return model, make_task("ioi", model, n=16, seed=0)


def test_corrupt_s2(toy_ioi, capsys):
    model, task = toy_ioi
    before = task.clean_tokens.clone()
    nb03.check_corrupt_s2(lambda task: task.mix("S2"), model, task)

    def io_at_s2(task):  # another valid design: the IO name repeated instead of S
        rows = torch.arange(task.n)
        tokens = task.clean_tokens.clone()
        tokens[rows, task.positions["S2"]] = task.clean_tokens[rows, task.positions["IO"]]
        return tokens

    nb03.check_corrupt_s2(io_at_s2, model, task)
    assert capsys.readouterr().out.count("✓ Exercise 03.2 passed") == 2

    def at(role, source):
        def corrupt(task):
            rows = torch.arange(task.n)
            tokens = task.clean_tokens.clone()
            tokens[rows, task.positions[role]] = source(task)[rows, task.positions[role]]
            return tokens
        return corrupt

    def s2_to_the(task):
        rows = torch.arange(task.n)
        tokens = task.clean_tokens.clone()
        tokens[rows, task.positions["S2"]] = task.clean_tokens[0, task.positions["S2"][0] - 3]  # a template word
        return tokens

    def in_place(task):
        rows = torch.arange(task.n)
        task.clean_tokens[rows, task.positions["S2"]] = task.corrupted_tokens[rows, task.positions["S2"]]
        return task.clean_tokens

    fails_with(nb03.check_corrupt_s2, at("S1", lambda t: t.corrupted_tokens), model, task, hint="first mention of the subject (S1)")
    fails_with(nb03.check_corrupt_s2, lambda task: task.corrupted_tokens.clone(), model, task, hint="indirect object (IO)")
    fails_with(nb03.check_corrupt_s2, lambda task: task.clean_tokens.clone(), model, task, hint="S2 is unchanged on 16 of 16")
    fails_with(nb03.check_corrupt_s2, s2_to_the, model, task, hint="not a name")
    fails_with(nb03.check_corrupt_s2, in_place, model, task, hint="in place")
    fails_with(nb03.check_corrupt_s2, lambda task: task.mix("S2")[:, :-1], model, task, hint="same length")
    fails_with(nb03.check_corrupt_s2, lambda task: task.mix("S2").tolist(), model, task, hint="as a tensor")
    assert torch.equal(task.clean_tokens, before), "the learner got a copy of the notebook's task"


def test_s2_prediction(toy_ioi, capsys):
    model, task = toy_ioi
    actual, grid = nb03.s2_cells(model, task, 0.35)
    s2, end = int(task.positions["S2"][0]), task.clean_tokens.shape[1] - 1
    assert (0, s2) in actual and grid is not None and len(actual) >= 3
    nb03.check_s2_prediction(set(actual), model, task, 0.35)
    nb03.check_s2_prediction([list(cell) for cell in actual], model, task, 0.35)  # a list of lists is fine
    assert capsys.readouterr().out.count("✓ Exercise 03.3 passed") == 2
    fails_with(nb03.check_s2_prediction, set(actual) - {(0, s2)}, model, task, 0.35, hint="restoring S2's embedding")
    fails_with(nb03.check_s2_prediction, set(actual) | {(1, 2)}, model, task, 0.35, hint="cannot know which name")
    fails_with(nb03.check_s2_prediction, set(actual) | {(0, end)}, model, task, 0.35, hint="only the position whose token differs")
    fails_with(nb03.check_s2_prediction, None, model, task, 0.35, hint="no prediction yet")
    fails_with(nb03.check_s2_prediction, 3, model, task, 0.35, hint="(layer, position) pairs")


def test_s2_checks_skip_a_model_without_the_behaviour(capsys):
    """On a random model (the GPT-2 stand-in's situation) the checks run without a traceback and say what they skipped."""
    from mi_course.tasks import make_task
    from test_tasks import _model
    from mi_course import grammar

    tok = grammar.tokenizer()
    model = _model(tok, len(tok))
    with torch.no_grad():
        model.W_U.mul_(1 / 3000)  # logits too small for the task to register
    task = make_task("ioi", model, n=8, seed=0)
    nb03.check_corrupt_s2(lambda task: task.mix("S2"), model, task)
    nb03.check_s2_prediction({(0, 1)}, model, task, 0.35)
    out = capsys.readouterr().out
    assert "the metric's response was not checked" in out and "not graded here" in out


# 03.4


def test_heads_interpretation(capsys):
    nb03.check_heads_interpretation("B")
    nb03.check_heads_interpretation(" b ")
    assert capsys.readouterr().out.count("✓ Exercise 03.4 passed") == 2
    fails_with(nb03.check_heads_interpretation, "A", hint="patterns into the corrupted run restores nothing")
    fails_with(nb03.check_heads_interpretation, "C", hint="queries decide where a head looks")
    fails_with(nb03.check_heads_interpretation, "D", hint="they matter")
    fails_with(nb03.check_heads_interpretation, None, hint="no answer yet")
    fails_with(nb03.check_heads_interpretation, "E", hint="unknown option")


# 03.5


def ablated_reference(z, head, mode, index=None):
    out = z.clone()
    if mode == "zero":
        out[:, :, head] = 0
    elif mode == "mean":
        out[:, :, head] = z[:, :, head].mean(0, keepdim=True)
    else:
        out[:, :, head] = z[index, :, head]
    return out


def ablated_other(z, head, mode, index=None):
    source = torch.zeros_like(z) if mode == "zero" else z.mean(0).expand_as(z) if mode == "mean" else z[index]
    keep = torch.arange(z.shape[2]) != head
    return torch.where(keep[None, None, :, None], z, source)


def test_ablated_z(example):
    model, tokens = example["model"], example["clean_tokens"]
    _, cache = model.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"]
    nb03.check_ablated_z(ablated_reference, z, 1)
    nb03.check_ablated_z(ablated_other, z, 1)

    def zero(z, head, mode, index=None):
        return ablated_reference(z, head, "zero" if mode == "mean" else mode, index)

    def over_positions(z, head, mode, index=None):
        out = z.clone()
        out[:, :, head] = z[:, :, head].mean(1, keepdim=True)
        return out if mode == "mean" else ablated_reference(z, head, mode, index)

    def all_heads(z, head, mode, index=None):
        return torch.zeros_like(z) if mode == "zero" else z.mean(0, keepdim=True).expand_as(z) if mode == "mean" else z[index]

    def no_resample(z, head, mode, index=None):
        return z if mode == "resample" else ablated_reference(z, head, mode, index)

    fails_with(nb03.check_ablated_z, zero, z, 1, hint="zero instead of mean")
    fails_with(nb03.check_ablated_z, over_positions, z, 1, hint="averaged over positions")
    fails_with(nb03.check_ablated_z, all_heads, z, 1, hint="every head")
    fails_with(nb03.check_ablated_z, no_resample, z, 1, hint="resample ablation left the head unchanged")

    def no_zero(z, head, mode, index=None):
        return z.clone() if mode == "zero" else ablated_reference(z, head, mode, index)

    fails_with(nb03.check_ablated_z, no_zero, z, 1, hint="zero ablation left the head unchanged")

    def in_place(z, head, mode, index=None):  # right values, but the exercise asks for a copy
        z[:, :, head] = 0 if mode == "zero" else z[:, :, head].mean(0, keepdim=True) if mode == "mean" else z[index, :, head].clone()
        return z

    before = z.clone()
    fails_with(nb03.check_ablated_z, in_place, z, 1, hint="changed `z` in place")
    assert torch.equal(z, before), "the learner got a copy of the notebook's tensor"


def test_ablated_z_matches_package(example):
    """The reference ablations give the package's ablation_sweep numbers."""
    model, tokens, metric = example["model"], example["clean_tokens"], example["metric"]
    for mode in ("zero", "mean", "resample"):
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

Z5 = (torch.randn(5, 4, 3, 2, generator=torch.Generator().manual_seed(3)), 1)


def _ablated_other_head(z, head, mode, index=None):
    return ablated_reference(z, (head + 1) % z.shape[2], mode, index)


def _ablated_in_place(z, head, mode, index=None):
    z[:, :, head] = 0 if mode == "zero" else z[:, :, head].mean(0, keepdim=True) if mode == "mean" else z[index, :, head].clone()
    return z


@pytest.mark.parametrize(
    "check, wrong, args, hint",
    [
        (nb03.check_ablated_z, _ablated_in_place, Z5, "changed `z` in place"),
        (nb03.check_ablated_z, _ablated_other_head, Z5, None),
        (nb03.check_ablated_z, lambda z, head, mode, index=None: ablated_reference(z, head, mode, index.argsort() if index is not None else None), Z5, None),
        (nb03.check_ablated_z, lambda z, head, mode, index=None: ablated_reference(z, head, "mean", None), Z5, None),
        (nb03.check_ablated_z, lambda z, head, mode, index=None: ablated_reference(z, head, "mean" if mode == "zero" else mode, index), Z5, None),
    ],
)
def test_wrong_answers_pass_in_no_draw(check, wrong, args, hint):
    assert_never_passes(check, wrong, *args, hint=hint)


# ---------------------------------------------------------------- the checks that run a model: every fresh case separates every mistake

from mi_course.checks.core import separates  # noqa: E402


@pytest.mark.parametrize(
    "layer, direction, pairwise",
    [(0, "denoising", True), (0, "noising", True), (1, "noising", False)],  # two of 03.1's mistakes agree in the last layer
)
def test_fresh_cases_separate_every_mistake(layer, direction, pairwise):
    draw = lambda seed: nb03._by_hand_case(seed, layer, direction)  # noqa: E731
    for seed in range(3):
        case = nb03.separating_case(draw, nb03._by_hand, nb03._BY_HAND_MISTAKES.values(), seed, pairwise=pairwise)
        assert separates(case, nb03._by_hand, nb03._BY_HAND_MISTAKES.values(), pairwise=pairwise)
        assert abs(nb03._by_hand(**case) - nb03._package(**case)) < 1e-4
