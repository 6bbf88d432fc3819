"""Every check of notebook 05 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import lens, residual
from mi_course.checks import nb05
from mi_course.checks.core import CheckFailed
from test_checks_core import assert_never_passes  # the cheap checks (05.2, 05.4): wrong answers fail in each of 300 draws


@pytest.fixture(scope="module")
def example():
    case = nb05.random_case(5)
    case.pop("gen")
    return case


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args, **kwargs)
    assert hint in err.value.hint, err.value.hint


# 05.1


def lens_reference(model, cache, layer):
    return model.ln_final(cache["resid_pre", layer]) @ model.W_U + model.b_U


def lens_other(model, cache, layer):
    resid = lens.residual_stack(model, cache)[layer]
    centred = resid - resid.mean(-1, keepdim=True)
    normed = centred / (centred.var(-1, keepdim=True, unbiased=False) + model.cfg.eps).sqrt()
    return torch.einsum("bpd,dv->bpv", normed * model.ln_final.w + model.ln_final.b, model.W_U) + model.b_U


def test_logit_lens_layer(example):
    args = (example["model"], example["cache"])
    nb05.check_logit_lens_layer(lens_reference, *args)
    nb05.check_logit_lens_layer(lens_other, *args)
    nb05.check_logit_lens_layer(lambda model, cache, layer: lens.logit_lens(model, cache)[layer], *args)

    def no_ln(model, cache, layer):
        return cache["resid_pre", layer] @ model.W_U + model.b_U

    def cached_scale(model, cache, layer):
        resid = cache["resid_pre", layer]
        normed = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
        return (normed * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U

    def post(model, cache, layer):
        return model.ln_final(cache["resid_post", layer]) @ model.W_U + model.b_U

    fails_with(nb05.check_logit_lens_layer, no_ln, *args, hint="forgot the final layer norm")
    fails_with(nb05.check_logit_lens_layer, cached_scale, *args, hint="scale from the cache")
    fails_with(nb05.check_logit_lens_layer, lambda model, cache, layer: model.ln_final(cache["resid_pre", layer]) @ model.W_U, *args, hint="unembedding bias")
    fails_with(nb05.check_logit_lens_layer, post, *args, hint="off by one layer")


# 05.2


def rank_other(logits, answers):
    flat, ids = logits.reshape(-1, logits.shape[-1]), answers.reshape(-1)
    ranks = [int((row > row[i]).sum()) + 1 for row, i in zip(flat, ids)]
    return torch.tensor(ranks).reshape(answers.shape)


@pytest.fixture(scope="module")
def rank_example(example):
    model, cache = example["model"], example["cache"]
    logits = lens.logit_lens(model, cache)[:, :, -1]
    return logits, logits[-1].argmax(-1).expand(logits.shape[:-1])


def test_answer_rank(rank_example):
    nb05.check_answer_rank(lens.answer_rank, *rank_example)
    nb05.check_answer_rank(rank_other, *rank_example)

    def zero_based(logits, answers):
        return lens.answer_rank(logits, answers) - 1

    def ties_against(logits, answers):
        return (logits >= logits.gather(-1, answers[..., None])).sum(-1)

    def from_bottom(logits, answers):
        return (logits < logits.gather(-1, answers[..., None])).sum(-1) + 1

    assert_never_passes(nb05.check_answer_rank, zero_based, *rank_example, hint="off by one")
    assert_never_passes(nb05.check_answer_rank, ties_against, *rank_example, hint="ties")
    assert_never_passes(nb05.check_answer_rank, from_bottom, *rank_example, hint="from the bottom")
    assert_never_passes(nb05.check_answer_rank, lambda logits, answers: (logits >= logits.gather(-1, answers[..., None])).sum(-1) + 1, *rank_example, hint="ties")
    assert_never_passes(nb05.check_answer_rank, lambda logits, answers: (logits.argsort(-1, descending=True) == answers[..., None]).float().argmax(-1) + 1, *rank_example, hint=None)


# 05.3


def head_reference(model, cache, layer, head):
    return lens.component_logits(model, cache, residual.head_outputs(model, cache, layer)[:, -1, head])


def head_other(model, cache, layer, head):
    out = torch.einsum("bd,dm->bm", cache["z", layer][:, -1, head], model.W_O[layer, head])
    centred = out - out.mean(-1, keepdim=True)
    return torch.einsum("bm,mv->bv", centred * model.ln_final.w / cache["ln_final.hook_scale"][:, -1], model.W_U)


def test_head_logits(example):
    args = (example["model"], example["cache"])
    nb05.check_head_logits(head_reference, *args, layer=1, head=1)
    nb05.check_head_logits(head_other, *args, layer=1, head=1)

    def own_ln(model, cache, layer, head):
        return model.ln_final(cache["z", layer][:, -1, head] @ model.W_O[layer, head]) @ model.W_U

    def with_b_U(model, cache, layer, head):
        return head_other(model, cache, layer, head) + model.b_U

    def no_scale(model, cache, layer, head):
        out = cache["z", layer][:, -1, head] @ model.W_O[layer, head]
        return ((out - out.mean(-1, keepdim=True)) * model.ln_final.w) @ model.W_U

    fails_with(nb05.check_head_logits, own_ln, *args, layer=1, head=1, hint="on its own")
    fails_with(nb05.check_head_logits, with_b_U, *args, layer=1, head=1, hint="b_U")
    fails_with(nb05.check_head_logits, no_scale, *args, layer=1, head=1, hint="forgot the final layer norm's scale")


# 05.4


def kl_reference(final_logits, lens_logits):
    log_p = final_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - lens_logits.log_softmax(-1))).sum(-1)


def kl_other(final_logits, lens_logits):
    return torch.nn.functional.kl_div(lens_logits.log_softmax(-1), final_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1)


@pytest.fixture(scope="module")
def kl_example(example):
    logits = lens.logit_lens(example["model"], example["cache"])
    return logits[-1], logits[0]


def test_kl_final_to_lens(kl_example):
    nb05.check_kl_final_to_lens(kl_reference, *kl_example)
    nb05.check_kl_final_to_lens(kl_other, *kl_example)

    def swapped(final_logits, lens_logits):
        return kl_reference(lens_logits, final_logits)

    def probs(final_logits, lens_logits):
        p, q = final_logits.softmax(-1), lens_logits.softmax(-1)
        return (p * (p - q)).sum(-1)

    def raw_logits(final_logits, lens_logits):
        return (final_logits.softmax(-1) * (final_logits - lens_logits)).sum(-1)

    assert_never_passes(nb05.check_kl_final_to_lens, swapped, *kl_example, hint="swapped")
    assert_never_passes(nb05.check_kl_final_to_lens, probs, *kl_example, hint="probabilities, not log-probabilities")
    assert_never_passes(nb05.check_kl_final_to_lens, raw_logits, *kl_example, hint="raw logits")
    assert_never_passes(nb05.check_kl_final_to_lens, lambda final_logits, lens_logits: kl_reference(final_logits, lens_logits) / torch.log(torch.tensor(2.0)), *kl_example, hint="bits")
    assert_never_passes(nb05.check_kl_final_to_lens, lambda final_logits, lens_logits: kl_reference(final_logits, lens_logits) / final_logits.shape[-1], *kl_example, hint="averaged over the vocabulary")
    assert_never_passes(nb05.check_kl_final_to_lens, lambda final_logits, lens_logits: kl_reference(final_logits, lens_logits).mean(), *kl_example, hint="shape")


def test_kl_matches_the_package(kl_example):
    final, early = kl_example
    assert torch.allclose(kl_reference(final, early).mean(), lens._kl_from_final(early[None].reshape(1, -1, final.shape[-1]), final.reshape(-1, final.shape[-1]))[0])


# the checks that run a model (05.1, 05.3): every fresh case separates every mistake

from mi_course.checks.core import separates  # noqa: E402


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (lambda seed: nb05._lens_case(seed, 0), nb05._lens_reference, nb05._LENS_MISTAKES),
        (lambda seed: nb05._lens_case(seed, 1), nb05._lens_reference, nb05._LENS_MISTAKES),
        (nb05._head_logits_case, nb05._head_logits_reference, nb05._HEAD_LOGITS_MISTAKES),
    ],
    ids=["05.1-layer0", "05.1-layer1", "05.3"],
)
def test_fresh_cases_separate_every_mistake(draw, reference, mistakes):
    for seed in range(3):
        case = nb05.separating_case(draw, reference, mistakes.values(), seed)
        assert separates(case, reference, mistakes.values())
