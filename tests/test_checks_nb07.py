"""Every check of notebook 07 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch

from mi_course import load_model
from mi_course import sae as sae_lib
from mi_course.checks import nb07
from mi_course.checks.core import CheckFailed
from test_checks_core import assert_never_passes


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    """The wrong answer fails in each of many draws of fresh inputs, always with that hint."""
    assert_never_passes(check, learner, *args, hint=hint, **kwargs)


# 07.1 (a TopK SAE's forward pass)


@pytest.fixture(scope="module")
def topk_example():
    model = nb07.random_sae(11, d_in=5, d_sae=12, k=4)
    return model, torch.randn(7, 5, generator=torch.Generator().manual_seed(1)) + 0.5


def test_encode_decode(topk_example):
    def reference(sae, x):
        pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        top = pre.topk(sae.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        return f, f @ sae.W_dec + sae.b_dec

    def other(sae, x):
        pre = torch.einsum("...d,ds->...s", x, sae.W_enc) - sae.b_dec @ sae.W_enc + sae.b_enc
        threshold = pre.sort(dim=-1, descending=True).values[..., sae.k - 1 : sae.k]
        f = torch.where(pre >= threshold, pre, 0.0).clamp(min=0)
        return f, torch.einsum("...s,sd->...d", f, sae.W_dec) + sae.b_dec

    nb07.check_encode_decode(reference, *topk_example)
    nb07.check_encode_decode(other, *topk_example)

    def no_b_dec(sae, x):
        pre = torch.relu(x @ sae.W_enc + sae.b_enc)
        top = pre.topk(sae.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        return f, f @ sae.W_dec + sae.b_dec

    def no_relu(sae, x):
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(sae.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        return f, f @ sae.W_dec + sae.b_dec

    def relu_only(sae, x):
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        return f, f @ sae.W_dec + sae.b_dec

    fails_with(nb07.check_encode_decode, no_b_dec, *topk_example, hint="subtract the decoder bias")
    fails_with(nb07.check_encode_decode, no_relu, *topk_example, hint="forgot the ReLU")
    fails_with(nb07.check_encode_decode, relu_only, *topk_example, hint="kept every positive latent")
    with pytest.raises(ValueError, match="TopK"):
        nb07.check_encode_decode(reference, nb07.random_sae(0), topk_example[1])


# 07.3 (prediction, graded by running the splice)


@pytest.fixture(scope="module")
def splice_case():
    model = load_model("attn-only-2l")
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_pre"
    acts = sae_lib.hook_activations(model, tokens, hook).reshape(-1, model.cfg.d_model)
    sae = sae_lib.SAE(model.cfg.d_model, 2 * model.cfg.d_model, k=8, seed=0)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    with torch.no_grad():
        ce = sae_lib.ce_loss_score(model, sae, tokens, hook)
    return model, sae, tokens, hook, ce["CE spliced"] - ce["CE clean"]


def test_splice_prediction_is_graded_by_the_run(splice_case, capsys):
    model, sae, tokens, hook, delta = splice_case
    truth = nb07.splice_cost_option(delta)
    assert nb07.check_splice_prediction(truth, model, sae, tokens, hook) == pytest.approx(delta)
    assert "07.3 passed" in capsys.readouterr().out
    for wrong in sorted(set(nb07.SPLICE_OPTIONS) - {truth}):
        with pytest.raises(CheckFailed, match="not what the run shows"):
            nb07.check_splice_prediction(wrong.lower(), model, sae, tokens, hook)
    for bad in (None, 3, "E", ["A"]):
        with pytest.raises(CheckFailed):
            nb07.check_splice_prediction(bad, model, sae, tokens, hook)


def test_splice_bands():
    assert [nb07.splice_cost_option(d) for d in (0.001, 0.05, 0.5, 3.0, -0.01)] == ["A", "B", "C", "D", "A"]


# 07.5 (ablate one latent, error term kept)


@pytest.fixture(scope="module")
def ablate_example():
    model = nb07.random_sae(5, d_in=6, d_sae=14, k=4)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        latent = int((model.encode(x) > 0).float().mean(0).argmax())
    return model, x, latent


def test_ablate_latent(ablate_example):
    def reference(sae, x, latent):
        f = sae.encode(x)
        edited = f.clone()
        edited[..., latent] = 0
        return x + sae.decode(edited) - sae.decode(f)

    def other(sae, x, latent):  # the latent's own contribution, subtracted directly
        return x - sae.encode(x)[..., latent, None] * sae.W_dec[latent]

    nb07.check_ablate_latent(reference, *ablate_example)
    nb07.check_ablate_latent(other, *ablate_example)

    def no_error(sae, x, latent):
        f = sae.encode(x)
        f[..., latent] = 0
        return sae.decode(f)

    def unscaled(sae, x, latent):
        return x - sae.W_dec[latent]

    def encoder_direction(sae, x, latent):
        return x - sae.encode(x)[..., latent, None] * sae.W_enc[:, latent]

    fails_with(nb07.check_ablate_latent, no_error, *ablate_example, hint="reconstruction error is lost")
    fails_with(nb07.check_ablate_latent, unscaled, *ablate_example, hint="whole decoder direction")
    fails_with(nb07.check_ablate_latent, encoder_direction, *ablate_example, hint="encoder direction")


# 07.6 (design: control latents)


@pytest.fixture(scope="module")
def control_example():
    acts = nb07.sparse_latents(4, n=80, d_sae=300)
    size = (acts * (acts > 0)).sum(0) / (acts > 0).sum(0).clamp(min=1)
    latent = int(size.argsort()[150])
    return acts, latent


def test_control_latents(control_example, capsys):
    acts, latent = control_example
    chosen = nb07.check_control_latents(sae_lib.matched_random_latents, acts, latent, n=8)
    assert len(chosen) == 8 and latent not in chosen

    def nearest(acts, latent, n):  # deterministic: the n closest in size (in ratio)
        fires = acts > 0
        size = (acts * fires).sum(0) / fires.sum(0).clamp(min=1)
        gap = (size / size[latent]).log().abs()
        gap[latent] = float("inf")
        gap[size == 0] = float("inf")
        return gap.argsort()[:n]

    nb07.check_control_latents(nearest, acts, latent, n=8)
    assert capsys.readouterr().out.count("07.6 passed") == 2

    def any_live_latents(acts, latent, n):  # live, but of any size
        live = (acts > 0).any(0).nonzero().flatten()
        live = live[live != latent]
        return live[torch.randperm(len(live))[:n]].tolist()

    def with_target(acts, latent, n):
        return [latent, *sae_lib.matched_random_latents(acts, latent, n - 1)]

    def dead_ones(acts, latent, n):
        dead = (~(acts > 0).any(0)).nonzero().flatten().tolist()
        return (dead + sae_lib.matched_random_latents(acts, latent, n))[:n]

    fails_with(nb07.check_control_latents, any_live_latents, acts, latent, n=8, hint="very different size")
    fails_with(nb07.check_control_latents, with_target, acts, latent, n=8, hint="latent under test itself")
    fails_with(nb07.check_control_latents, dead_ones, acts, latent, n=8, hint="never fire")
    with pytest.raises(CheckFailed, match="integers"):
        nb07.check_control_latents(lambda acts, latent, n: "latents", acts, latent, n=8)
    with pytest.raises(CheckFailed, match="asked for 8"):
        nb07.check_control_latents(lambda acts, latent, n: [1, 2], acts, latent, n=8)


# 07.4 and 07.7 (interpretations)


def test_interpretations(capsys):
    nb07.check_confound("B")
    nb07.check_intervention("c")
    assert capsys.readouterr().out.count("passed") == 2
    for letter in "ACD":
        with pytest.raises(CheckFailed):
            nb07.check_confound(letter)
    for letter in "ABD":
        with pytest.raises(CheckFailed):
            nb07.check_intervention(letter)
    with pytest.raises(CheckFailed, match="no answer"):
        nb07.check_intervention(None)


def test_splice_prediction_on_another_model_is_measured_not_graded(splice_case, capsys):
    model, sae, tokens, hook, delta = splice_case
    wrong = next(letter for letter in nb07.SPLICE_OPTIONS if letter != nb07.splice_cost_option(delta))
    assert nb07.check_splice_prediction(wrong, model, sae, tokens, hook, graded=False) == pytest.approx(delta)
    out = capsys.readouterr().out
    assert "not graded" in out and "passed" not in out
    with pytest.raises(CheckFailed):
        nb07.check_splice_prediction(None, model, sae, tokens, hook, graded=False)


# 07.2 (feature dimensionality)


@pytest.fixture(scope="module")
def toy_W():
    with torch.enable_grad():
        W, _ = sae_lib.train_toy_superposition(n_features=20, d_hidden=5, feature_probs=(1.0, 0.03), steps=200, seed=0, progress=False)
    return W


def test_dimensionality(toy_W, capsys):
    def written_out(W):
        norms = W.norm(dim=-2, keepdim=True)
        directions = torch.where(norms > 0, W / norms, 0.0)
        shared = torch.einsum("...di,...dj->...ij", directions, W).square().sum(-1)
        d = norms.squeeze(-2).square() / shared
        return torch.nan_to_num(d, nan=0.0)

    nb07.check_dimensionality(sae_lib.feature_dimensionality, toy_W)
    nb07.check_dimensionality(written_out, toy_W)
    assert capsys.readouterr().out.count("✓ Exercise 07.2 passed") == 2

    def unnormalised(W):
        norms = W.norm(dim=-2)
        return torch.nan_to_num(norms.pow(2) / (W.transpose(-1, -2) @ W).pow(2).sum(-1), nan=0.0)

    def without_itself(W):
        norms = W.norm(dim=-2)
        unit = W / norms.clamp(min=1e-8).unsqueeze(-2)
        overlaps = (unit.transpose(-1, -2) @ W).pow(2)
        rest = overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)
        return torch.where(norms > 1e-6, norms.pow(2) / rest.clamp(min=1e-12), torch.zeros_like(norms))

    def nan_for_unused(W):
        norms = W.norm(dim=-2)
        return norms.pow(2) / ((W / norms.unsqueeze(-2)).transpose(-1, -2) @ W).pow(2).sum(-1)

    def features_as_rows(W):  # the embedding read the wrong way round
        return sae_lib.feature_dimensionality(W.transpose(-1, -2))

    def just_the_norm(W):
        return W.norm(dim=-2)

    assert_never_passes(nb07.check_dimensionality, unnormalised, toy_W, hint="direction")
    assert_never_passes(nb07.check_dimensionality, without_itself, toy_W, hint="left the feature itself out")
    assert_never_passes(nb07.check_dimensionality, nan_for_unused, toy_W, hint="not NaN")  # the general hint says so
    assert_never_passes(nb07.check_dimensionality, features_as_rows, toy_W)
    assert_never_passes(nb07.check_dimensionality, just_the_norm, toy_W)
    for bad in (None, "no", lambda W: "x", lambda W: (W, W)):
        with pytest.raises(CheckFailed):
            nb07.check_dimensionality(bad, toy_W)
