"""Every check of notebook 07 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import sae as sae_lib
from mi_course.checks import nb07
from mi_course.checks.core import CheckFailed  # noqa: F401
from test_checks_core import assert_never_passes


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    """Every check of this notebook is cheap: the wrong answer fails in each of 300 draws of fresh inputs, always with that hint."""
    assert_never_passes(check, learner, *args, hint=hint, **kwargs)


@pytest.fixture(scope="module")
def latents():
    return nb07.sparse_latents(7, n=64, d_sae=32)


# 07.1


def test_l0(latents):
    nb07.check_l0(sae_lib.l0, latents)
    nb07.check_l0(lambda acts: float(sum(int(torch.count_nonzero(row)) for row in acts) / len(acts)), latents)

    fails_with(nb07.check_l0, lambda acts: (acts != 0).sum(0).float().mean().item(), latents, hint="over the batch")
    fails_with(nb07.check_l0, lambda acts: (acts != 0).float().mean().item(), latents, hint="*fraction*")
    fails_with(nb07.check_l0, lambda acts: (acts != 0).sum().item(), latents, hint="total number")


# 07.2


@pytest.fixture(scope="module")
def ev_example():
    case = nb07._ev_case(3)
    return case["x"], case["x_hat"]


def test_explained_variance(ev_example):
    nb07.check_explained_variance(sae_lib.explained_variance, *ev_example)

    def other(x, x_hat):
        residual = torch.nn.functional.mse_loss(x_hat, x, reduction="sum")
        total = x.var(0, unbiased=False).sum() * x.shape[0]
        return float(1 - residual / total)

    nb07.check_explained_variance(other, *ev_example)

    def uncentred(x, x_hat):
        return 1 - ((x - x_hat) ** 2).sum().item() / (x**2).sum().item()

    def fvu(x, x_hat):
        return 1 - sae_lib.explained_variance(x, x_hat)

    def by_mean(x, x_hat):
        return 1 - ((x - x_hat) ** 2).mean().item() / x.mean().item()

    fails_with(nb07.check_explained_variance, uncentred, *ev_example, hint="forgot to centre")
    fails_with(nb07.check_explained_variance, fvu, *ev_example, hint="FVU")
    fails_with(nb07.check_explained_variance, by_mean, *ev_example, hint="divided by the mean")


# 07.3


@pytest.fixture(scope="module")
def sae_example():
    model = nb07.random_sae(11, d_in=5, d_sae=12)
    return model, torch.randn(7, 5, generator=torch.Generator().manual_seed(1)) + 0.5


def test_encode_decode(sae_example):
    def reference(sae, x):
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        return f, f @ sae.W_dec + sae.b_dec

    def other(sae, x):
        pre = torch.einsum("nd,ds->ns", x, sae.W_enc) - sae.b_dec @ sae.W_enc + sae.b_enc
        f = pre.clamp(min=0)
        return f, torch.einsum("ns,sd->nd", f, sae.W_dec) + sae.b_dec

    nb07.check_encode_decode(reference, *sae_example)
    nb07.check_encode_decode(other, *sae_example)

    def no_b_dec(sae, x):
        f = torch.relu(x @ sae.W_enc + sae.b_enc)
        return f, f @ sae.W_dec + sae.b_dec

    def no_relu(sae, x):
        f = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        return f, f @ sae.W_dec + sae.b_dec

    def no_decode_bias(sae, x):
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        return f, f @ sae.W_dec

    fails_with(nb07.check_encode_decode, no_b_dec, *sae_example, hint="subtract b_dec before encoding")
    fails_with(nb07.check_encode_decode, no_relu, *sae_example, hint="forgot the ReLU")
    fails_with(nb07.check_encode_decode, no_decode_bias, *sae_example, hint="add b_dec back")


# 07.4


@pytest.fixture(scope="module")
def pre_example():
    return torch.randn(6, 20, generator=torch.Generator().manual_seed(2)), 4


def test_topk_activation(pre_example):
    def reference(pre, k):
        top = torch.relu(pre).topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def other(pre, k):
        threshold = pre.sort(dim=-1, descending=True).values[..., k - 1 : k]
        return torch.where(pre >= threshold, pre, 0.0).clamp(min=0)

    nb07.check_topk_activation(reference, *pre_example)
    nb07.check_topk_activation(other, *pre_example)

    def smallest(pre, k):
        top = pre.topk(k, dim=-1, largest=False)
        return torch.relu(torch.zeros_like(pre).scatter(-1, top.indices, top.values))

    def no_relu(pre, k):
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def values_only(pre, k):
        return torch.relu(pre.topk(k, dim=-1).values)

    fails_with(nb07.check_topk_activation, smallest, *pre_example, hint="*smallest*")
    fails_with(nb07.check_topk_activation, no_relu, *pre_example, hint="forgot the ReLU")
    fails_with(nb07.check_topk_activation, values_only, *pre_example, hint="only the k values")


# 07.5


def test_ce_loss_score():
    example = dict(ce_clean=1.4, ce_zero=9.5, ce_spliced=1.6)

    def reference(ce_clean, ce_zero, ce_spliced):
        return (ce_zero - ce_spliced) / (ce_zero - ce_clean)

    def other(ce_clean, ce_zero, ce_spliced):
        return 1 - (ce_spliced - ce_clean) / (ce_zero - ce_clean)

    nb07.check_ce_loss_score(reference, **example)
    nb07.check_ce_loss_score(other, **example)
    fails_with(nb07.check_ce_loss_score, lambda ce_clean, ce_zero, ce_spliced: (ce_clean - ce_spliced) / (ce_clean - ce_zero), **example, hint="swapped")
    fails_with(nb07.check_ce_loss_score, lambda ce_clean, ce_zero, ce_spliced: (ce_zero - ce_spliced) / ce_zero, **example, hint="zero-ablation loss alone")
    fails_with(nb07.check_ce_loss_score, lambda ce_clean, ce_zero, ce_spliced: ce_spliced - ce_clean, **example, hint="raw increase")
    fails_with(nb07.check_ce_loss_score, lambda ce_clean, ce_zero, ce_spliced: abs(ce_zero - ce_spliced) / abs(ce_zero - ce_clean), **example, hint="score = (CE zero ablation")
    fails_with(nb07.check_ce_loss_score, lambda ce_clean, ce_zero, ce_spliced: min(1.0, max(0.0, (ce_zero - ce_spliced) / (ce_zero - ce_clean))), **example, hint="score = (CE zero ablation")


# 07.6


def test_dead_fraction(latents):
    nb07.check_dead_fraction(lambda acts: sae_lib.dead_latents(acts).float().mean().item(), latents)
    nb07.check_dead_fraction(lambda acts: 1 - float((acts.amax(0) > 0).sum()) / acts.shape[1], latents)

    fails_with(nb07.check_dead_fraction, lambda acts: (acts == 0).float().mean().item(), latents, hint="zero *entries*")
    fails_with(nb07.check_dead_fraction, lambda acts: int((acts.sum(0) == 0).sum()), latents, hint="number of dead latents")
    fails_with(nb07.check_dead_fraction, lambda acts: (acts > 0).any(0).float().mean().item(), latents, hint="*alive*")
    fails_with(nb07.check_dead_fraction, lambda acts: (acts == 0).any(0).float().mean().item(), latents, hint="*some* token")
    fails_with(nb07.check_dead_fraction, lambda acts: (acts >= 0).all(0).float().mean().item(), latents, hint="a latent is dead if it fires")


def test_checks_report_unimplemented(latents):
    def todo(acts):
        raise NotImplementedError("hint")

    fails_with(nb07.check_l0, todo, latents, hint="not implemented")


def test_plot_superposition():
    """The notebook's superposition figure (mi_course.viz.plot_superposition): one column of panels per sparsity."""
    from mi_course import viz

    W, _ = sae_lib.train_toy_superposition(n_features=6, d_hidden=2, feature_probs=(1.0, 0.1), steps=20, progress=False)
    fig = viz.plot_superposition(W, (1.0, 0.1), title="toy")
    assert len(fig.axes) == 4
