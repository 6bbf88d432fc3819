"""Every check of notebook 01 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import einops
import pytest
import torch

from mi_course import residual
from mi_course.checks import nb01
from mi_course.checks.core import CheckFailed


@pytest.fixture(scope="module")
def example():
    model = nb01.random_model(7)
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(7))
    _, cache = model.run_with_cache(tokens)
    answers, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    return dict(model=model, tokens=tokens, cache=cache, answers=answers, wrong_answers=wrong)


def fails_with(check, learner, *args, hint: str) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args)
    assert hint in err.value.hint, err.value.hint


# 01.1


def parts_reference(model, cache):
    return residual.layer_components(model, cache)[0]


def parts_other(model, cache):
    names = [n for n in cache.keys() if n in ("hook_embed", "hook_pos_embed") or n.endswith(("hook_attn_out", "hook_mlp_out"))]
    return torch.stack([cache[n] for n in names])


def parts_no_pos(model, cache):
    return parts_reference(model, cache)[[0, 2, 3, 4, 5]]


def parts_cumulative(model, cache):
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.hook_resid_{k}" for l in range(2) for k in ("mid", "post")]
    return torch.stack([cache[n] for n in names])


def parts_no_mlp(model, cache):
    return parts_reference(model, cache)[[0, 1, 2, 4]]


def test_residual_parts(example):
    args = (example["model"], example["cache"])
    nb01.check_residual_parts(parts_reference, *args)
    nb01.check_residual_parts(parts_other, *args)
    fails_with(nb01.check_residual_parts, parts_no_pos, *args, hint="position embeddings")
    fails_with(nb01.check_residual_parts, parts_cumulative, *args, hint="running sums")
    fails_with(nb01.check_residual_parts, parts_no_mlp, *args, hint="left out the MLPs")


# 01.2


def head_reference(model, cache, layer, head):
    return residual.head_outputs(model, cache, layer)[:, :, head]


def head_other(model, cache, layer, head):
    z = cache["z", layer]
    return einops.einsum(z[:, :, head], model.blocks[layer].attn.W_O[head], "b p d, d m -> b p m")


def test_head_output(example):
    args = (example["model"], example["cache"])
    nb01.check_head_output(head_reference, *args)
    nb01.check_head_output(head_other, *args)
    fails_with(nb01.check_head_output, lambda model, cache, layer, head: head_reference(model, cache, layer, head) + model.b_O[layer], *args, hint="b_O")
    fails_with(nb01.check_head_output, lambda model, cache, layer, head: cache["v", layer][:, :, head] @ model.W_O[layer, head], *args, hint="hook_v")
    fails_with(nb01.check_head_output, lambda model, cache, layer, head: cache["z", layer][:, :, head], *args, hint="shape")


# 01.3


def dla_other(model, cache, answers, wrong_answers, layer, head):
    out = cache["z", layer][:, -1, head] @ model.W_O[layer, head]
    normed = out / cache["ln_final.hook_scale"][:, -1]
    return torch.einsum("bd,db->b", normed, model.W_U[:, answers]) - torch.einsum("bd,db->b", normed, model.W_U[:, wrong_answers])


def test_head_dla(example):
    args = tuple(example[k] for k in ("model", "cache", "answers", "wrong_answers"))
    nb01.check_head_dla(lambda model, cache, answers, wrong_answers, layer, head: residual.head_dla(model, cache, answers, wrong_answers)[layer, head], *args)
    nb01.check_head_dla(dla_other, *args)

    def no_scale(model, cache, answers, wrong_answers, layer, head):
        out = cache["z", layer][:, -1, head] @ model.W_O[layer, head]
        return (out * (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T).sum(-1)

    def answer_only(model, cache, answers, wrong_answers, layer, head):
        out = cache["z", layer][:, -1, head] @ model.W_O[layer, head] / cache["ln_final.hook_scale"][:, -1]
        return (out * model.W_U[:, answers].T).sum(-1)

    fails_with(nb01.check_head_dla, no_scale, *args, hint="scale")
    fails_with(nb01.check_head_dla, answer_only, *args, hint="W_U[:, answers] alone")
    fails_with(nb01.check_head_dla, lambda **c: -dla_other(**c), *args, hint="sign is flipped")


# 01.4


def top_other(dla_grid, k):
    cells = [(abs(float(dla_grid[l, h])), l, h) for l in range(dla_grid.shape[0]) for h in range(dla_grid.shape[1])]
    return [(l, h) for _, l, h in sorted(cells, reverse=True)[:k]]


def test_top_heads(example):
    grid = residual.head_dla(*(example[k] for k in ("model", "cache", "answers", "wrong_answers"))).mean(-1)
    nb01.check_top_heads(lambda dla_grid, k: residual.top_components(dla_grid, k), grid)
    nb01.check_top_heads(top_other, grid)
    def signed(dla_grid, k):
        cells = [(float(dla_grid[l, h]), l, h) for l in range(dla_grid.shape[0]) for h in range(dla_grid.shape[1])]
        return [(l, h) for _, l, h in sorted(cells, reverse=True)[:k]]

    fails_with(nb01.check_top_heads, signed, grid, hint="absolute value")
    fails_with(nb01.check_top_heads, lambda dla_grid, k: [(h, l) for l, h in top_other(dla_grid, k)], grid, hint="(layer, head)")


# 01.5


def hook_other(part, pos):
    def hook(resid, hook):
        delta = torch.zeros_like(resid)
        delta[:, pos, :] = part
        return resid - delta
    return hook


def hook_in_place(part, pos):
    def hook(resid, hook):
        resid[:, pos, :] = resid[:, pos, :] - part  # right values, but the exercise asks for a copy
    return hook


def test_remove_part_hook(example):
    model, tokens = example["model"], example["tokens"]
    part = residual.head_outputs(model, example["cache"], 1)[:, -1, 0]
    nb01.check_remove_part_hook(residual.remove_part_hook, model, tokens, part)
    nb01.check_remove_part_hook(hook_other, model, tokens, part)
    fails_with(nb01.check_remove_part_hook, hook_in_place, model, tokens, part, hint="edits the residual stream it receives in place")
    fails_with(nb01.check_remove_part_hook, lambda part, pos: (lambda resid, hook: resid - part[:, None]), model, tokens, part, hint="every position")
    fails_with(nb01.check_remove_part_hook, lambda part, pos: residual.remove_part_hook(-part, pos), model, tokens, part, hint="added")

    def copy_not_returned(part, pos):
        def hook(resid, hook):
            resid = resid.clone()
            resid[:, pos] -= part
        return hook

    fails_with(nb01.check_remove_part_hook, copy_not_returned, model, tokens, part, hint="return the edited tensor")


# 01.6


def by_layer_other(model, cache, answers, wrong_answers):
    n = model.cfg.n_layers
    running = [cache["resid_pre", l][:, -1] for l in range(n)] + [cache["resid_post", n - 1][:, -1]]
    scale = cache["ln_final.hook_scale"][:, -1]
    logits = [(r / scale) @ model.W_U + model.b_U for r in running]
    rows = torch.arange(len(answers))
    return torch.stack([lg[rows, answers] - lg[rows, wrong_answers] for lg in logits])


def test_logit_diff_by_layer(example):
    args = tuple(example[k] for k in ("model", "cache", "answers", "wrong_answers"))
    nb01.check_logit_diff_by_layer(lambda **c: residual.accumulated_logit_diff(**c)[0], *args)
    nb01.check_logit_diff_by_layer(by_layer_other, *args)

    def no_bias(model, cache, answers, wrong_answers):
        return by_layer_other(model, cache, answers, wrong_answers) - (model.b_U[answers] - model.b_U[wrong_answers])

    def no_scale(model, cache, answers, wrong_answers):
        direction = (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T
        running = residual.accumulated_resid(model, cache)[0]
        return (running * direction).sum(-1) + model.b_U[answers] - model.b_U[wrong_answers]

    def own_scale(model, cache, answers, wrong_answers):
        running = residual.accumulated_resid(model, cache)[0]
        normed = model.ln_final(running)  # the logit lens proper: a fresh scale for every row
        return (normed * (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T).sum(-1) + model.b_U[answers] - model.b_U[wrong_answers]

    fails_with(nb01.check_logit_diff_by_layer, no_bias, *args, hint="unembedding bias")
    fails_with(nb01.check_logit_diff_by_layer, own_scale, *args, hint="logit lens proper")
    fails_with(nb01.check_logit_diff_by_layer, lambda **c: by_layer_other(**c)[1:], *args, hint="row 0")
    fails_with(nb01.check_logit_diff_by_layer, no_scale, *args, hint="forgot the final layer norm's scale")


# ---------------------------------------------------------------- pass rates over many draws (01.4; the other checks run a model)

from test_checks_core import assert_never_passes  # noqa: E402

SQUARE_GRID = torch.tensor([[0.5, -2.0, 0.1], [1.5, 0.3, -0.7], [0.2, 0.9, -1.1]])  # square, like the notebook's


def _flat_top(grid, k, width):
    return [(int(i) // width, int(i) % width) for i in grid.abs().flatten().topk(k).indices]


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda dla_grid, k: [(int(i) // dla_grid.shape[1], int(i) % dla_grid.shape[1]) for i in dla_grid.flatten().topk(k).indices], "absolute value"),
        (lambda dla_grid, k: [(h, l) for l, h in residual.top_components(dla_grid, k)], "(layer, head) pairs"),
        (lambda dla_grid, k: _flat_top(dla_grid, k, dla_grid.shape[0]), "unflattened with the wrong size"),
        (lambda dla_grid, k: [tuple(divmod(int(i), dla_grid.shape[0])) for i in dla_grid.abs().flatten().topk(k).indices], "unflattened"),
        (lambda dla_grid, k: residual.top_components(dla_grid, k)[::-1], "wrong order"),
        (lambda dla_grid, k: residual.top_components(dla_grid, 3), "expected a list of"),
        (lambda dla_grid, k: residual.top_components(dla_grid.abs().sqrt() * dla_grid.sign().clamp(min=0), k), None),
    ],
)
def test_top_heads_wrong_answers_pass_in_no_draw(wrong, hint):
    assert_never_passes(nb01.check_top_heads, wrong, SQUARE_GRID, hint=hint)


# ---------------------------------------------------------------- the checks that run a model: every fresh case separates every mistake

from mi_course.checks.core import separates  # noqa: E402


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (nb01._parts_case, nb01._parts_reference, nb01._PARTS_MISTAKES),
        (nb01._head_case, nb01._head_reference, nb01._HEAD_MISTAKES),
        (nb01._dla_case, nb01._dla_reference, nb01._DLA_MISTAKES),
        (nb01._remove_case, nb01._remove_reference, nb01._REMOVE_MISTAKES),
        (nb01._by_layer_case, nb01._by_layer_reference, nb01._BY_LAYER_MISTAKES),
    ],
    ids=["01.1", "01.2", "01.3", "01.5", "01.6"],
)
def test_fresh_cases_separate_every_mistake(draw, reference, mistakes):
    """By construction (separating_case redraws until it holds); here: how the checks draw them."""
    for seed in range(3):
        case = nb01.separating_case(draw, reference, mistakes.values(), seed)
        assert separates(case, reference, mistakes.values())


def test_remove_part_hook_at_the_last_position_only(example):
    model, tokens = example["model"], example["tokens"]
    part = residual.head_outputs(model, example["cache"], 1)[:, -1, 0]
    fails_with(nb01.check_remove_part_hook, lambda part, pos: residual.remove_part_hook(part, -1), model, tokens, part, hint="always edited the last position")
