"""Every check of notebook 01 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

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


# 01.2 direct-path hooks (design)


def direct_reference(model, cache, layer, head):
    return residual.direct_path_hooks(model, cache, layer, head)


def direct_other(model, cache, layer, head):
    """Correct, differently written: swaps the whole final stream's last position to the edited value, scale frozen."""
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, -1]
    target = final - out + out.mean(0)

    def set_last(resid, hook):
        return torch.cat([resid[:, :-1], target[:, None]], dim=1)

    return [("ln_final.hook_scale", lambda scale, hook: cache["ln_final.hook_scale"] + 0), (f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", set_last)]


def direct_in_place(model, cache, layer, head):
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    change = out - out.mean(0)

    def swap(resid, hook):
        resid[:, -1] -= change
        return resid

    return [(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", swap), ("ln_final.hook_scale", lambda scale, hook: cache["ln_final.hook_scale"])]


DIRECT_WRONG = [
    (nb01._whole_output, "compares it with a zero output"),
    (nb01._scale_recomputed, "scale was recomputed"),
    (nb01._total, "that is the total effect"),
    (nb01._too_early, "right after the head's own layer"),
    (nb01._mean_over_positions, "not its mean over positions"),
    (direct_in_place, "in place"),
    (lambda model, cache, layer, head: None, "list of (hook name, hook function) pairs"),
    (lambda model, cache, layer, head: [("blocks.9.hook_resid_post", lambda r, hook: r)], "no hook point"),
]


def direct_args(example, layer=0, head=1):
    return tuple(example[k] for k in ("model", "tokens", "cache", "answers", "wrong_answers")) + (layer, head)


def test_direct_path_hooks(example, capsys):
    nb01.check_direct_path_hooks(direct_reference, *direct_args(example))
    nb01.check_direct_path_hooks(direct_other, *direct_args(example))
    assert capsys.readouterr().out.count("✓ Exercise 01.2 passed") == 2


@pytest.mark.parametrize("wrong, hint", DIRECT_WRONG)
def test_direct_path_hooks_mistakes(example, wrong, hint):
    fails_with(nb01.check_direct_path_hooks, wrong, *direct_args(example), hint=hint)


def test_direct_path_hooks_change_the_logit_difference_by_the_direct_effect_only(example):
    model, cache = example["model"], example["cache"]
    dla = residual.head_dla(model, cache, example["answers"], example["wrong_answers"])[0, 1]
    out = residual.head_outputs(model, cache, 0)[:, -1, 1]
    directions = residual.logit_diff_directions(model, example["answers"], example["wrong_answers"])
    mean_dla = (residual.apply_final_ln_scale(model, out.mean(0).expand_as(out), cache) * directions).sum(-1)
    clean = residual.logit_diff(model(example["tokens"]), example["answers"], example["wrong_answers"])
    direct = nb01._direct_reference(**{k: example[k] for k in ("model", "tokens", "cache", "answers", "wrong_answers")}, layer=0, head=1)
    assert torch.allclose(clean - direct, dla - mean_dla, atol=1e-4)
    total = nb01._direct_diff(nb01._total, **{k: example[k] for k in ("model", "tokens", "cache", "answers", "wrong_answers")}, layer=0, head=1)
    assert not torch.allclose(direct, total, atol=1e-2)  # a later layer reacts: the test can tell them apart


# 01.3 prediction


def test_direct_vs_total_prediction_is_graded_by_running(example, capsys):
    args = tuple(example[k] for k in ("model", "tokens", "cache", "answers", "wrong_answers"))
    layer, head = residual.top_components(residual.head_dla(*args[:1], args[2], *args[3:]).mean(-1), 1)[0]
    direct, total = nb01.drops(*args, layer, head)
    truth = "B" if total / direct > 1.2 else "C" if total / direct < 0.8 else "A"
    nb01.check_direct_vs_total(truth.lower(), *args)
    assert "✓ Exercise 01.3 passed" in capsys.readouterr().out
    for wrong in sorted(set("ABC") - {truth}):
        fails_with(nb01.check_direct_vs_total, wrong, *args, hint="not on this model")
    wrong = sorted(set("ABC") - {truth})[0]
    nb01.check_direct_vs_total(wrong, *args, graded=False)
    out = capsys.readouterr().out
    assert "not graded on this model" in out and f"you predicted {wrong}" in out and "passed" not in out
    fails_with(nb01.check_direct_vs_total, None, *args, hint="no prediction yet")
    fails_with(nb01.check_direct_vs_total, "E", *args, hint="give one letter")


def test_direct_vs_total_options_follow_the_ratio():
    assert [nb01._direct_vs_total_option(d, t) for d, t in [(1.0, 2.0), (1.0, 0.5), (1.0, 1.1), (-1.0, -2.0), (-1.0, -0.5), (-1.0, 1.0)]] == ["B", "C", "A", "B", "C", "C"]


# 01.4 interpretation


def test_direct_total_reading(capsys):
    nb01.check_direct_total_reading("A")
    assert "✓ Exercise 01.4 passed" in capsys.readouterr().out
    fails_with(nb01.check_direct_total_reading, "B", hint="by construction")
    fails_with(nb01.check_direct_total_reading, "C", hint="would equal the direct drop")
    fails_with(nb01.check_direct_total_reading, "D", hint="same mean")
    fails_with(nb01.check_direct_total_reading, {"A"}, hint="give one letter")


def test_reading_answer_is_not_readable_from_the_package(root):
    package = "\n".join(p.read_text() for p in (root / "mi_course").rglob("*.py"))
    assert "DLA credits the head only with the direct part" not in package


# 01.5


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


# ---------------------------------------------------------------- the checks that run a model: every fresh case separates every mistake

from mi_course.checks.core import separates  # noqa: E402


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (nb01._dla_case, nb01._dla_reference, nb01._DLA_MISTAKES),
        (nb01._direct_case, nb01._direct_reference, nb01._DIRECT_MISTAKES),
        (nb01._by_layer_case, nb01._by_layer_reference, nb01._BY_LAYER_MISTAKES),
    ],
    ids=["01.1", "01.2", "01.5"],
)
def test_fresh_cases_separate_every_mistake(draw, reference, mistakes):
    """By construction (separating_case redraws until it holds); here: how the checks draw them."""
    for seed in range(3):
        case = nb01.separating_case(draw, reference, mistakes.values(), seed)
        assert separates(case, reference, mistakes.values())
