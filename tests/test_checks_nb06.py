"""Every check of notebook 06 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import scipy.stats
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


def test_atp_score(acts):
    nb06.check_atp_score(lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).sum(dim=(0, 2)), *acts)
    nb06.check_atp_score(lambda clean_act, corrupted_act, grad: torch.einsum("bpd,bpd->p", corrupted_act, grad) - torch.einsum("bpd,bpd->p", clean_act, grad), *acts)
    fails_with(nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((clean_act - corrupted_act) * grad).sum(dim=(0, 2)), *acts, hint="sign is flipped")
    fails_with(nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).sum(dim=0), *acts, hint="forgot to sum over d_model")
    fails_with(nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).mean(dim=0).sum(-1), *acts, hint="averaged over the batch")
    fails_with(nb06.check_atp_score, lambda clean_act, corrupted_act, grad: (corrupted_act * grad).sum(dim=(0, 2)), *acts, hint="use the difference")


def test_atp_score_not_implemented(acts):
    def stub(clean_act, corrupted_act, grad):
        raise NotImplementedError("hint")

    fails_with(nb06.check_atp_score, stub, *acts, hint="not implemented")


# 06.2

A, B = torch.tensor([3.0, -1.0, 0.0, 0.0, 2.5, 7.0]), torch.tensor([2.0, 0.0, 0.0, 1.0, 2.0, 9.0])


def test_spearman():
    nb06.check_spearman(lambda a, b: attribution.rank_correlation(a, b), A, B)
    nb06.check_spearman(lambda a, b: float(scipy.stats.spearmanr(a.numpy(), b.numpy()).statistic), A, B)

    def pearson(a, b):
        a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    def ordinal(a, b):
        return pearson(a.argsort(stable=True).argsort().double(), b.argsort(stable=True).argsort().double())

    fails_with(nb06.check_spearman, pearson, A, B, hint="Pearson correlation of the values")
    fails_with(nb06.check_spearman, ordinal, A, B, hint="mean of their ranks")


# 06.3


def test_top_k_overlap():
    a, b = torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2, 1.0]), torch.tensor([0.0, 2.0, -2.5, -1.5, 0.3, 0.2])
    nb06.check_top_k_overlap(lambda a, b, k: attribution.top_k_overlap(a, b, k), a, b, 3)

    def with_sorting(a, b, k):
        top = lambda x: set(sorted(range(len(x)), key=lambda i: -abs(float(x[i])))[:k])
        return len(top(a) & top(b)) / k

    nb06.check_top_k_overlap(with_sorting, a, b, 3)
    fails_with(nb06.check_top_k_overlap, lambda a, b, k: len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k, a, b, 3, hint="signed score")
    fails_with(nb06.check_top_k_overlap, lambda a, b, k: len(set(a.abs().topk(k).indices.tolist()) & set(b.abs().topk(k).indices.tolist())), a, b, 3, hint="divide by k")


# 06.4


def test_eap_edge_score(acts):
    clean, corrupted, receiver = acts
    args = (clean, corrupted, receiver + 1.0, receiver)
    nb06.check_eap_edge_score(lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_corrupted - sender_clean) * receiver_grad).sum()), *args)
    nb06.check_eap_edge_score(lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: torch.dot((sender_corrupted - sender_clean).flatten(), receiver_grad.flatten()).item(), *args)
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_corrupted - sender_clean) * sender_grad).sum()), *args, hint="gradient at the sender's output")
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float(((sender_clean - sender_corrupted) * receiver_grad).sum()), *args, hint="sign is flipped")
    fails_with(nb06.check_eap_edge_score, lambda sender_clean, sender_corrupted, sender_grad, receiver_grad: float((sender_corrupted * receiver_grad).sum()), *args, hint="use the difference")


# 06.5

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


# 06.6

CURVE = {10: 0.1, 25: 0.3, 50: 0.6, 75: 0.75, 100: 0.91, 150: 0.95, 200: 0.96}


def test_circuit_size():
    nb06.check_circuit_size(100, CURVE)
    nb06.check_circuit_size(100.0, CURVE)  # a float size is accepted
    fails_with(nb06.check_circuit_size, 75, CURVE, hint="largest size that still falls short")
    fails_with(nb06.check_circuit_size, 0.91, CURVE, hint="not a size")
    fails_with(nb06.check_circuit_size, 200, CURVE, hint="largest size of the curve")
    fails_with(nb06.check_circuit_size, None, CURVE, hint="no answer yet")


# ---------------------------------------------------------------- pass rates over many draws

from test_checks_core import assert_never_passes  # noqa: E402

_g6 = torch.Generator().manual_seed(6)
ATP = tuple(torch.randn(3, 5, 8, generator=_g6) for _ in range(3))
EAP = (ATP[0], ATP[1], ATP[2] + 1.0, ATP[2])
TOPK = (torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2, 1.0]), torch.tensor([0.0, 2.0, -2.5, -1.5, 0.3, 0.2]), 3)


def _pearson(a, b):
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ig(grad_fn, clean, corrupted, steps, ks):
    return sum(grad_fn(corrupted + k / steps * (clean - corrupted)) for k in ks) / len(ks)


@pytest.mark.parametrize(
    "check, wrong, args, hint",
    [
        (nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((clean_act - corrupted_act) * grad).sum(dim=(0, 2)), ATP, "sign is flipped"),
        (nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).sum(dim=(0, 2)).abs(), ATP, "summed over the batch and d_model"),
        (nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).mean(dim=0).sum(-1), ATP, "averaged over the batch"),
        (nb06.check_atp_score, lambda clean_act, corrupted_act, grad: (corrupted_act * grad).sum(dim=(0, 2)), ATP, "use the difference"),
        (nb06.check_atp_score, lambda clean_act, corrupted_act, grad: ((corrupted_act - clean_act) * grad).sum(dim=(0, 1)), ATP, None),
        (nb06.check_spearman, _pearson, (A, B), "Pearson correlation of the values"),
        (nb06.check_spearman, lambda a, b: _pearson(a.argsort(stable=True).argsort().double(), b.argsort(stable=True).argsort().double()), (A, B), "mean of their ranks"),
        (nb06.check_spearman, lambda a, b: abs(attribution.rank_correlation(a, b)), (A, B), "absolute value"),
        (nb06.check_top_k_overlap, lambda a, b, k: len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k, TOPK, "signed score"),
        (nb06.check_top_k_overlap, lambda a, b, k: len(set(a.abs().topk(k).indices.tolist()) & set(b.abs().topk(k).indices.tolist())), TOPK, "divide by k"),
        (nb06.check_top_k_overlap, lambda a, b, k: len(set(a.abs().topk(3).indices.tolist()) & set(b.abs().topk(3).indices.tolist())) / 3, TOPK, None),
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
