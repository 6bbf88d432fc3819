"""Every check of notebook 05 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import lens, load_model
from mi_course.checks import nb05
from mi_course.checks.core import CheckFailed, separates
from mi_course.tasks import make_task
from test_checks_core import assert_never_passes


@pytest.fixture(scope="module")
def example():
    return nb05.random_case(5)


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args, **kwargs)
    assert hint in err.value.hint, err.value.hint


# 05.1


def stack_reference(model, tokens):
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([model.ln_final(cache[name]) @ model.W_U + model.b_U for name in names])


def stack_other(model, tokens):
    """Hand-written layer norm, einsum, and the stack from the package's residual_stack."""
    resid = lens.residual_stack(model, tokens)
    centred = resid - resid.mean(-1, keepdim=True)
    normed = centred / (centred.var(-1, keepdim=True, unbiased=False) + model.cfg.eps).sqrt()
    return torch.einsum("lbpd,dv->lbpv", normed * model.ln_final.w + model.ln_final.b, model.W_U) + model.b_U


def _decode_each(model, tokens, how):
    _, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    return torch.stack([how(model, cache, cache[name]) for name in names])


def test_logit_lens_stack(example):
    args = (example["model"], example["tokens"])
    nb05.check_logit_lens_stack(stack_reference, *args)
    nb05.check_logit_lens_stack(stack_other, *args)

    def cached_scale(model, cache, resid):
        normed = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
        return (normed * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U

    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: _decode_each(model, tokens, lambda m, c, r: r @ m.W_U + m.b_U), *args, hint="forgot the final layer norm")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: _decode_each(model, tokens, cached_scale), *args, hint="scale from the cache")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: _decode_each(model, tokens, lambda m, c, r: m.ln_final(r) @ m.W_U), *args, hint="unembedding bias")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: stack_reference(model, tokens)[:-1], *args, hint="the stack has")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: stack_reference(model, tokens)[1:], *args, hint="the stack has")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: stack_reference(model, tokens)[-1], *args, hint="one residual stream")
    fails_with(nb05.check_logit_lens_stack, lambda model, tokens: None, *args, hint="returns None")


def test_fresh_cases_separate_every_mistake():
    for seed in range(3):
        case = nb05.separating_case(nb05.random_case, nb05._stack_reference, nb05._STACK_MISTAKES.values(), seed)
        assert separates(case, nb05._stack_reference, nb05._STACK_MISTAKES.values())


# 05.2 to 05.4 run on toy-lm


@pytest.fixture(scope="module")
def toy():
    model = load_model("toy-lm")
    tasks = {name: make_task(name, model, n=64, seed=0) for name in ("ioi", "greater_than", "sva")}
    return model, tasks, lens.layer_labels(model)


def test_top1_prediction(toy, capsys):
    model, tasks, labels = toy
    right = {"ioi": "after L1", "greater_than": "after L3", "sva": "after L3"}
    nb05.check_top1_prediction(right, *toy)
    nb05.check_top1_prediction({"ioi": "after L2", "greater_than": "after L3", "sva": "after L3"}, *toy)  # within one entry, in order
    assert capsys.readouterr().out.count("✓ Exercise 05.2 passed") == 2
    fails_with(nb05.check_top1_prediction, {"ioi": "after L2", "greater_than": "after L2", "sva": "after L2"}, *toy, hint="order is off")
    fails_with(nb05.check_top1_prediction, {"ioi": "after L3", "greater_than": "after L0", "sva": "after L3"}, *toy, hint="ioi settles earlier, greater_than settles later")
    fails_with(nb05.check_top1_prediction, {"ioi": "after L1"}, *toy, hint="one entry label per task")
    fails_with(nb05.check_top1_prediction, {**right, "ioi": 1}, *toy, hint="each value is one of the labels")
    fails_with(nb05.check_top1_prediction, None, *toy, hint="no prediction yet")
    nb05.check_top1_prediction(None, *toy, graded=False)
    assert "not graded" in capsys.readouterr().out


def control_reference(tokens, io, s, names, seed):
    return lens.name_control(tokens, io, s, names, seed)


def control_other(tokens, io, s, names, seed):
    """A different correct design: a seeded shift through the name list instead of a permutation."""
    gen = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    for row in range(tokens.shape[0]):
        others = [int(n) for n in names if n != io[row] and n != s[row]]
        k = int(torch.randint(0, len(others), (1,), generator=gen))
        out[row][tokens[row] == io[row]] = others[k]
        out[row][tokens[row] == s[row]] = others[(k + 1) % len(others)]
    return out


def test_control_prompts(toy):
    model, tasks, _ = toy
    ioi = tasks["ioi"]
    nb05.check_control_prompts(control_reference, model, ioi)
    nb05.check_control_prompts(control_other, model, ioi)

    def io_only(tokens, io, s, names, seed):  # the subject is left in the context
        out = tokens.clone()
        for row in range(len(tokens)):
            out[row][tokens[row] == io[row]] = names[(names != io[row]) & (names != s[row])][0]
        return out

    def swap(tokens, io, s, names, seed):  # the two names swapped: both still in the context
        out = tokens.clone()
        for row in range(len(tokens)):
            out[row][tokens[row] == io[row]], out[row][tokens[row] == s[row]] = s[row], io[row]
        return out

    def new_last_token(tokens, io, s, names, seed):
        out = control_reference(tokens, io, s, names, seed)
        out[:, -1] = names[0]
        return out

    def abc(tokens, io, s, names, seed):  # three names: the repeated subject is no longer repeated
        out = control_reference(tokens, io, s, names, seed)
        for row in range(len(tokens)):
            where = (tokens[row] == s[row]).nonzero()[-1]
            out[row, where] = [n for n in names if n not in out[row] and n != io[row] and n != s[row]][0]
        return out

    def unseeded(tokens, io, s, names, seed):
        return control_reference(tokens, io, s, names, int(torch.randint(0, 10**6, (1,))))

    fails_with(nb05.check_control_prompts, io_only, model, ioi, hint="still contains a name")
    fails_with(nb05.check_control_prompts, swap, model, ioi, hint="still contains a name")
    fails_with(nb05.check_control_prompts, new_last_token, model, ioi, hint="changes tokens other than the two names")
    fails_with(nb05.check_control_prompts, abc, model, ioi, hint="repeated name stays repeated")
    fails_with(nb05.check_control_prompts, unseeded, model, ioi, hint="same seed")
    fails_with(nb05.check_control_prompts, lambda tokens, io, s, names, seed: tokens[:, :-1], model, ioi, hint="the same length")


def test_choices(capsys):
    nb05.check_lens_reading("B")
    nb05.check_path_prediction("B")
    assert "✓ Exercise 05.3 passed" in capsys.readouterr().out
    for wrong in "ACD":
        fails_with(nb05.check_lens_reading, wrong, hint=" ")
        fails_with(nb05.check_path_prediction, wrong, hint=" ")
    fails_with(nb05.check_lens_reading, "E", hint="unknown option")
    fails_with(nb05.check_path_prediction, None, hint="no answer yet")


# ---------------------------------------------------------------- wrong answers over many draws


@pytest.mark.parametrize("wrong, hint", [(lambda model, tokens: stack_reference(model, tokens)[:-1], "the stack has"), (lambda model, tokens: _decode_each(model, tokens, lambda m, c, r: m.ln_final(r) @ m.W_U), "unembedding bias")])
def test_wrong_lens_passes_in_no_draw(example, wrong, hint):
    assert_never_passes(nb05.check_logit_lens_stack, wrong, example["model"], example["tokens"], hint=hint, draws=10)
