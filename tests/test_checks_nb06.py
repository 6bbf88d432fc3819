"""Every check of notebook 06 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import attribution
from mi_course.checks import nb06
from mi_course.checks.core import CheckFailed


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args, **kwargs)
    assert hint in err.value.hint, err.value.hint


@pytest.fixture(scope="module")
def acts():
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(3, 5, 8, generator=gen) for _ in range(3))


# 06.1


@pytest.fixture(scope="module")
def atp_case():
    return nb06._atp_case(11)


def _atp_by_hand(model, clean, corrupted, metric):
    """A differently written AtP: retain_grad on the heads' outputs, then backward."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    kept = {}

    def keep(z, hook):
        z.retain_grad()
        kept[hook.name] = z
        return z

    with torch.enable_grad():
        embed = model.embed(clean).detach().requires_grad_(True)
        metric(model.run_with_hooks(clean, fwd_hooks=[("hook_embed", lambda act, hook: embed)] + [(n, keep) for n in names])).backward()
    return torch.stack([torch.einsum("bphd,bphd->h", corrupted_cache[n] - kept[n].detach(), kept[n].grad) for n in names])


def test_atp_heads(atp_case):
    nb06.check_atp_heads(lambda model, clean, corrupted, metric: nb06._atp_heads(model, clean, corrupted, metric), **atp_case)
    nb06.check_atp_heads(_atp_by_hand, **atp_case)
    fails_with(nb06.check_atp_heads, lambda **c: -_atp_by_hand(**c), **atp_case, hint="sign is flipped")
    fails_with(nb06.check_atp_heads, lambda **c: _atp_by_hand(**c) / c["clean"].shape[0], **atp_case, hint="averaged over the prompts")
    fails_with(nb06.check_atp_heads, nb06._atp_heads_leaves, **atp_case, hint="gradient stops at the next head")
    fails_with(nb06.check_atp_heads, nb06._atp_heads_at_corrupted, **atp_case, hint="gradient on the corrupted run")
    per_position = lambda model, clean, corrupted, metric: attribution.attribution_patching(model, clean, corrupted, metric, "z", ("layer", "pos", "head"))
    fails_with(nb06.check_atp_heads, per_position, **atp_case, hint="score per position")


def test_atp_heads_stub_and_bad_returns(atp_case):
    def stub(model, clean, corrupted, metric):
        raise NotImplementedError("hint")

    fails_with(nb06.check_atp_heads, stub, **atp_case, hint="not implemented")
    fails_with(nb06.check_atp_heads, lambda **c: None, **atp_case, hint="returns None")


# 06.2


@pytest.fixture(scope="module")
def toy_ioi():
    from mi_course import load_model, patching
    from mi_course.tasks import make_task

    model = load_model("toy-lm")
    task = make_task("ioi", model, n=32, seed=0)
    args = (task.clean_tokens, task.corrupted_tokens, task.metric)
    with torch.no_grad():
        noising = patching.patch_head_out(model, *args, direction="noising", progress=False) - task.clean_value
        denoising = patching.patch_head_out(model, *args, direction="denoising", progress=False) - task.corrupted_value
    return (model, *args, noising, denoising)


def test_atp_prediction(toy_ioi, capsys):
    nb06.check_atp_prediction({"better direction": "denoising", "worst layer": 0}, *toy_ioi)
    assert "✓ Exercise 06.2 passed" in capsys.readouterr().out
    fails_with(nb06.check_atp_prediction, {"better direction": "noising", "worst layer": 0}, *toy_ioi, hint="the direction")
    fails_with(nb06.check_atp_prediction, {"better direction": "denoising", "worst layer": 3}, *toy_ioi, hint="the layer")
    fails_with(nb06.check_atp_prediction, {"better direction": "denoising"}, *toy_ioi, hint="keys")
    fails_with(nb06.check_atp_prediction, {"better direction": "both", "worst layer": 0}, *toy_ioi, hint='"noising" or "denoising"')
    fails_with(nb06.check_atp_prediction, {"better direction": "denoising", "worst layer": "L0"}, *toy_ioi, hint="layer number")
    fails_with(nb06.check_atp_prediction, None, *toy_ioi, hint="no prediction yet")
    nb06.check_atp_prediction({"better direction": "noising", "worst layer": 3}, *toy_ioi, graded=False)  # another model: a printed line
    assert "not graded" in capsys.readouterr().out


# 06.3

SCORES = torch.tensor([0.3, -2.0, 0.05, 1.5, -0.4, 0.0, 0.9, -0.1, 0.02, 3.0, -0.6, 0.2, 0.01, -1.1, 0.0, 0.7])


def _sample(scores, budget, seed, n_top=None):
    order = torch.as_tensor(scores).flatten().abs().argsort(descending=True)
    n_top = (budget + 1) // 2 if n_top is None else n_top
    rest = order[n_top:]
    return order[:n_top].tolist() + rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: budget - n_top]].tolist()


def test_validation_sample():
    nb06.check_validation_sample(attribution.validation_sample, SCORES, 6)
    nb06.check_validation_sample(lambda scores, budget, seed: _sample(scores, budget, seed, n_top=2), SCORES, 6)  # fewer at the top: fine
    nb06.check_validation_sample(lambda scores, budget, seed: torch.tensor(_sample(scores, budget, seed)), SCORES, 6)  # a tensor of indices
    top_only = lambda scores, budget, seed: scores.abs().argsort(descending=True)[:budget].tolist()
    fails_with(nb06.check_validation_sample, top_only, SCORES, 6, hint="all from the top")
    bottom = lambda scores, budget, seed: scores.abs().argsort(descending=True)[: budget // 2].tolist() + scores.abs().argsort()[: budget - budget // 2].tolist()
    fails_with(nb06.check_validation_sample, bottom, SCORES, 6, hint="same whatever the seed")
    uniform = lambda scores, budget, seed: torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))[:budget].tolist()
    fails_with(nb06.check_validation_sample, uniform, SCORES, 6, hint="ranks first")
    unseeded = lambda scores, budget, seed: _sample(scores, budget, int(torch.randint(0, 10**6, (1,))))
    fails_with(nb06.check_validation_sample, unseeded, SCORES, 6, hint="same seed")
    fails_with(nb06.check_validation_sample, lambda scores, budget, seed: _sample(scores, budget - 1, seed), SCORES, 6, hint="exactly")
    fails_with(nb06.check_validation_sample, lambda scores, budget, seed: "top", SCORES, 6, hint="indices")


# 06.4


def test_failure_story(capsys):
    nb06.check_failure_story("B")
    assert "✓ Exercise 06.4 passed" in capsys.readouterr().out
    for wrong in "ACD":
        fails_with(nb06.check_failure_story, wrong, hint=" ")
    fails_with(nb06.check_failure_story, "E", hint="unknown option")
    fails_with(nb06.check_failure_story, None, hint="no answer yet")


# 06.5


def test_eap_edge_score(acts):
    clean, corrupted, receiver = acts
    args = (clean, corrupted, receiver + 1.0, receiver)
    nb06.check_eap_edge_score(lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_corrupted - sender_clean) * receiver_grad).sum()), *args)
    nb06.check_eap_edge_score(lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: torch.dot((sender_corrupted - sender_clean).flatten(), receiver_grad.flatten()).item(), *args)
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_corrupted - sender_clean) * sender_grad).sum()), *args, hint="gradient at the sender's output")
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_clean - sender_corrupted) * receiver_grad).sum()), *args, hint="sign is flipped")
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float((sender_corrupted * receiver_grad).sum()), *args, hint="use the difference")


# 06.6

W = torch.tensor([[1.0, -2.0], [0.5, 1.5]])
IG_ARGS = (lambda x: (1 - torch.tanh(x @ W) ** 2) @ W.T, torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 0.0]]), 5)


def test_ig_gradient():
    def reference(grad_fn, clean, corrupted, steps):
        return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(1, steps + 1)) / steps

    def stacked(grad_fn, clean, corrupted, steps):
        alphas = torch.arange(1, steps + 1, dtype=clean.dtype) / steps
        return torch.stack([grad_fn(torch.lerp(corrupted, clean, float(a))) for a in alphas]).mean(0)

    nb06.check_ig_gradient(reference, *IG_ARGS)
    nb06.check_ig_gradient(stacked, *IG_ARGS)

    def mean_of_inputs(grad_fn, clean, corrupted, steps):
        return grad_fn(sum(corrupted + k / steps * (clean - corrupted) for k in range(1, steps + 1)) / steps)

    def from_zero(grad_fn, clean, corrupted, steps):
        return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(steps)) / steps

    def both_ends(grad_fn, clean, corrupted, steps):
        return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in range(steps + 1)) / (steps + 1)

    fails_with(nb06.check_ig_gradient, mean_of_inputs, *IG_ARGS, hint="averaged the activations instead of the gradients")
    fails_with(nb06.check_ig_gradient, from_zero, *IG_ARGS, hint="off by one")
    fails_with(nb06.check_ig_gradient, both_ends, *IG_ARGS, hint="off by one")


# ---------------------------------------------------------------- pass rates over many draws

from test_checks_core import assert_never_passes  # noqa: E402

_g6 = torch.Generator().manual_seed(6)
ATP = tuple(torch.randn(3, 5, 8, generator=_g6) for _ in range(3))
EAP = (ATP[0], ATP[1], ATP[2] + 1.0, ATP[2])


def _ig(grad_fn, clean, corrupted, steps, ks):
    return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in ks) / len(ks)


@pytest.mark.parametrize(
    "check, wrong, args, hint",
    [
        (nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_corrupted - sender_clean) * sender_grad).sum()), EAP, "gradient at the sender's output"),
        (nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_clean - sender_corrupted) * receiver_grad).sum()), EAP, "sign is flipped"),
        (nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: abs(float(((sender_corrupted - sender_clean) * receiver_grad).sum())), EAP, "absolute value"),
        (nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float((sender_corrupted * receiver_grad).sum()), EAP, "use the difference"),
        (nb06.check_ig_gradient, lambda grad_fn, clean, corrupted, steps: grad_fn(sum(corrupted + k / steps * (clean - corrupted) for k in range(1, steps + 1)) / steps), IG_ARGS, "averaged the activations"),
        (nb06.check_ig_gradient, lambda grad_fn, clean, corrupted, steps: _ig(grad_fn, clean, corrupted, steps, range(steps)), IG_ARGS, "off by one"),
        (nb06.check_ig_gradient, lambda grad_fn, clean, corrupted, steps: _ig(grad_fn, clean, corrupted, steps, range(steps + 1)), IG_ARGS, "off by one"),
        (nb06.check_ig_gradient, lambda grad_fn, clean, corrupted, steps: _ig(grad_fn, corrupted, clean, steps, range(1, steps + 1)), IG_ARGS, "off by one"),  # the same points as k = 0 .. steps - 1
        (nb06.check_ig_gradient, lambda grad_fn, clean, corrupted, steps: _ig(grad_fn, clean, corrupted, 5, range(1, 6)), IG_ARGS, None),
    ],
)
def test_wrong_answers_pass_in_no_draw(check, wrong, args, hint):
    assert_never_passes(check, wrong, *args, hint=hint)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda scores, budget, seed: scores.abs().argsort(descending=True)[:budget].tolist(), "all from the top"),
        (lambda scores, budget, seed: torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))[:budget].tolist(), None),
        (lambda scores, budget, seed: scores.abs().argsort(descending=True)[: budget // 2].tolist() + scores.abs().argsort()[: budget - budget // 2].tolist(), "same whatever the seed"),
    ],
)
def test_wrong_samples_pass_in_no_draw(wrong, hint):
    assert_never_passes(nb06.check_validation_sample, wrong, SCORES, 6, hint=hint)


@pytest.mark.parametrize("wrong", [nb06._atp_heads_leaves, nb06._atp_heads_at_corrupted, lambda **c: -nb06._atp_heads(**c)])
def test_wrong_atp_passes_in_no_draw(atp_case, wrong):
    assert_never_passes(nb06.check_atp_heads, wrong, draws=10, **atp_case)
