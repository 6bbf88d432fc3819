"""Checks of notebook 07 (sparse autoencoders).

Each check runs the learner's function on the notebook's example and on fresh random inputs:
sparse random latents, activations with a large mean (so that forgetting to centre shows), a
small SAE whose every parameter is random (both biases included), pre-activations with many
negative entries (so that forgetting the ReLU shows), and random cross-entropies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from mi_course import sae as sae_lib
from mi_course.checks.core import check_function, fresh_seed
from mi_course.checks.nb01 import _check

__all__ = [
    "check_ce_loss_score",
    "check_dead_fraction",
    "check_encode_decode",
    "check_explained_variance",
    "check_l0",
    "check_topk_activation",
    "random_sae",
    "sparse_latents",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "07.1": ("mi_course.sae.SAE.encode", "mi_course.sae.SAE.decode", "mi_course.sae.SAE.forward"),
    "07.3": ("mi_course.sae.l0",),
    "07.4": ("mi_course.sae.explained_variance",),
    "07.5": ("mi_course.sae.dead_latents",),
    "07.6": ("mi_course.sae.ce_loss_score",),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_latents(seed: int, n: int = 50, d_sae: int = 24) -> Tensor:
    """Non-negative latents, mostly zero, with a few latents that never fire."""
    gen = _gen(seed)
    acts = torch.relu(torch.randn(n, d_sae, generator=gen) - 1.0)
    dead = torch.randperm(d_sae, generator=gen)[: d_sae // 4]
    acts[:, dead] = 0.0
    return acts


def random_sae(seed: int, d_in: int = 6, d_sae: int = 16) -> sae_lib.SAE:
    """An SAE with random, independent encoder, decoder and biases (nothing at its initial value)."""
    gen = _gen(seed)
    model = sae_lib.SAE(d_in, d_sae, seed=seed)
    with torch.no_grad():
        model.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        model.b_enc.copy_(0.3 * torch.randn(d_sae, generator=gen))
        model.b_dec.copy_(2.0 * torch.randn(d_in, generator=gen))
        model.normalize_decoder_()
    return model


# 07.3 (L0) ---------------------------------------------------------------------------------


def _l0(acts, *, how):
    if how == "batch":
        return (acts != 0).sum(0).float().mean().item()
    if how == "fraction":
        return (acts != 0).float().mean().item()
    return (acts != 0).sum().item()


def check_l0(learner: Callable, acts: Float[Tensor, "n d_sae"]) -> None:
    """``l0(acts)``: the mean number of non-zero latents per token, a Python float."""
    seed = fresh_seed()
    cases = [dict(acts=acts), dict(acts=sparse_latents(seed, n=37)), dict(acts=sparse_latents(seed + 1, n=11, d_sae=40))]
    check_function(
        "07.3",
        learner,
        lambda acts: sae_lib.l0(acts),
        cases,
        mistakes={
            "you counted the non-zero entries over the batch (per latent), not per token: sum over the latent dimension (-1), then average over tokens.": lambda **c: _l0(**c, how="batch"),
            "you returned the *fraction* of non-zero entries; L0 is a *count* per token: sum over latents, then average over tokens.": lambda **c: _l0(**c, how="fraction"),
            "you returned the total number of non-zero entries; divide by the number of tokens (average over tokens).": lambda **c: _l0(**c, how="total"),
        },
        hint="L0 = (acts != 0) summed over the latent dimension, averaged over tokens, as a float.",
        success="your L0 matches",
    )


# 07.4 (explained variance) ---------------------------------------------------------------------------------


def _ev(x, x_hat, *, how):
    err = (x - x_hat).pow(2)
    if how == "uncentred":
        return 1 - (err.sum() / x.pow(2).sum()).item()
    if how == "fvu":
        return (err.sum() / (x - x.mean(0)).pow(2).sum()).item()
    if how == "token_mean":
        return 1 - (err.sum() / (x - x.mean(-1, keepdim=True)).pow(2).sum()).item()
    if how == "per_dim":
        return 1 - (err.sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean().item()
    if how == "mean":
        return 1 - (err.mean() / x.mean()).item()
    raise ValueError(how)


def _ev_case(seed: int) -> dict:
    gen = _gen(seed)
    n, d = 40, 7
    x = torch.randn(n, d, generator=gen) * torch.rand(d, generator=gen).add(0.3) + 3 * torch.randn(d, generator=gen)
    return dict(x=x, x_hat=x + 0.4 * torch.randn(n, d, generator=gen))


def check_explained_variance(learner: Callable, x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> None:
    """``explained_variance(x, x_hat)``: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2, a Python float."""
    cases = [dict(x=x, x_hat=x_hat), _ev_case(fresh_seed())]
    check_function(
        "07.4",
        learner,
        lambda x, x_hat: sae_lib.explained_variance(x, x_hat),
        cases,
        mistakes={
            "you forgot to centre: the total variance is sum |x - mean(x)|^2 with the mean over tokens (x.mean(0)), not sum |x|^2.": lambda **c: _ev(**c, how="uncentred"),
            "you returned the FVU (the unexplained fraction); explained variance = 1 - FVU.": lambda **c: _ev(**c, how="fvu"),
            "you centred each token on its own mean (over d); the mean to subtract is over tokens, one per dimension: x.mean(0).": lambda **c: _ev(**c, how="token_mean"),
            "you averaged the ratio over dimensions; sum the squared errors and the squared deviations over everything first, then divide once.": lambda **c: _ev(**c, how="per_dim"),
            "you divided by the mean instead of the variance: the denominator is sum |x - mean(x)|^2.": lambda **c: _ev(**c, how="mean"),
        },
        hint="1 - (x - x_hat)^2 summed over everything / (x - x.mean(0))^2 summed over everything, as a float.",
        success="your explained variance matches",
    )


# 07.1 (forward pass) ---------------------------------------------------------------------------------


def _encode_decode(sae, x, *, sub_b_dec=True, relu=True, add_b_dec=True, w_dec=False):
    pre = ((x - sae.b_dec) if sub_b_dec else x) @ (sae.W_dec.T if w_dec else sae.W_enc) + sae.b_enc
    f = torch.relu(pre) if relu else pre
    return f, f @ sae.W_dec + (sae.b_dec if add_b_dec else 0)


def check_encode_decode(learner: Callable, sae: sae_lib.SAE, x: Float[Tensor, "n d_in"]) -> None:
    """``encode_decode(sae, x)``: the ReLU SAE's latents f and reconstruction x_hat, as a tuple."""
    seed = fresh_seed()
    fresh = random_sae(seed)
    cases = [dict(sae=sae, x=x), dict(sae=fresh, x=torch.randn(9, fresh.d_in, generator=_gen(seed)) + 1.0)]

    def reference(sae, x):
        with torch.no_grad():
            f = sae.encode(x)
            return f, sae.decode(f)

    def wrap(**flags):
        def wrong(sae, x):
            with torch.no_grad():
                return _encode_decode(sae, x, **flags)
        return wrong

    _check(
        "07.1",
        learner,
        reference,
        cases,
        mistakes={
            "you forgot to subtract b_dec before encoding: f = ReLU((x - b_dec) @ W_enc + b_enc).": wrap(sub_b_dec=False),
            "you forgot the ReLU: latents are non-negative, f = ReLU(pre-activations).": wrap(relu=False),
            "you forgot to add b_dec back when decoding: x_hat = f @ W_dec + b_dec.": wrap(add_b_dec=False),
            "you encoded with the decoder (W_dec.T); the encoder has its own weights, sae.W_enc.": wrap(w_dec=True),
        },
        hint="f = ReLU((x - b_dec) @ W_enc + b_enc) and x_hat = f @ W_dec + b_dec; return (f, x_hat).",
        success="your SAE forward pass matches",
    )


# 07.2 (TopK) ---------------------------------------------------------------------------------


def _topk(pre, k, *, how):
    if how == "smallest":
        top = pre.topk(k, dim=-1, largest=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    if how == "smallest_raw":
        top = pre.topk(k, dim=-1, largest=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    if how == "no_relu":
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    if how == "abs":
        top = pre.abs().topk(k, dim=-1)
        return torch.relu(torch.zeros_like(pre).scatter(-1, top.indices, pre.gather(-1, top.indices)))
    if how == "values":
        return torch.relu(pre.topk(k, dim=-1).values)
    raise ValueError(how)


def _topk_reference(pre, k):
    top = torch.relu(pre).topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def check_topk_activation(learner: Callable, pre: Float[Tensor, "... d_sae"], k: int) -> None:
    """``topk_activation(pre, k)``: keep the k largest pre-activations per token (after a ReLU), zero the rest."""
    gen = _gen(fresh_seed())
    d = int(torch.randint(8, 13, (1,), generator=gen))
    cases = [
        dict(pre=pre, k=k),
        dict(pre=torch.randn(5, d, generator=gen) - 0.8, k=d - 2),  # fewer positive entries than k: the ReLU matters
        dict(pre=torch.randn(2, 3, d, generator=gen), k=3),
    ]
    _check(
        "07.2",
        learner,
        _topk_reference,
        cases,
        mistakes={
            "you kept the k *smallest* pre-activations: topk keeps the largest by default (largest=True).": lambda **c: _topk(**c, how="smallest"),
            "you kept the k smallest, and without the ReLU: keep the k largest, and let no negative value through.": lambda **c: _topk(**c, how="smallest_raw"),
            "you forgot the ReLU: when fewer than k pre-activations are positive, negative values slip into the top k. Apply a ReLU too (before or after the TopK).": lambda **c: _topk(**c, how="no_relu"),
            "you ranked by absolute value: TopK keeps the largest *signed* pre-activations.": lambda **c: _topk(**c, how="abs"),
            "you returned only the k values; put them back at their indices in a tensor of zeros of the input's shape (scatter).": lambda **c: _topk(**c, how="values"),
        },
        hint="ReLU the pre-activations, keep the k largest per token (topk on the last dimension), scatter them into zeros of the same shape.",
        success="your TopK activation matches",
    )


# 07.6 (CE loss score) ---------------------------------------------------------------------------------


def _ce_reference(ce_clean, ce_zero, ce_spliced):
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)


def check_ce_loss_score(learner: Callable, ce_clean: float, ce_zero: float, ce_spliced: float) -> None:
    """``ce_loss_score(ce_clean, ce_zero, ce_spliced)``: the fraction of the loss gap the SAE recovers, a float."""
    gen = _gen(fresh_seed())
    clean = 1 + float(torch.rand(1, generator=gen))
    zero = clean + 2 + 3 * float(torch.rand(1, generator=gen))
    cases = [dict(ce_clean=ce_clean, ce_zero=ce_zero, ce_spliced=ce_spliced)]
    # spliced between clean and zero ablation; worse than zero ablation (a negative score); better than clean (above 1)
    for low, high in ((0.05, 0.55), (1.1, 1.6), (-0.4, -0.1)):
        spliced = clean + (zero - clean) * (low + (high - low) * float(torch.rand(1, generator=gen)))
        cases.append(dict(ce_clean=clean, ce_zero=zero, ce_spliced=spliced))
    check_function(
        "07.6",
        learner,
        _ce_reference,
        cases,
        mistakes={
            "clean and zero-ablation are swapped: you computed the fraction of the loss gap *lost* (1 - score). "
            "The score is (CE zero - CE spliced) / (CE zero - CE clean).": lambda ce_clean, ce_zero, ce_spliced: (ce_clean - ce_spliced) / (ce_clean - ce_zero),
            "you divided by the zero-ablation loss alone; divide by the gap between zero ablation and clean: CE zero - CE clean.": lambda ce_clean, ce_zero, ce_spliced: (ce_zero - ce_spliced) / ce_zero,
            "you returned the raw increase in loss (CE spliced - CE clean); normalise it: score = (CE zero - CE spliced) / (CE zero - CE clean).": lambda ce_clean, ce_zero, ce_spliced: ce_spliced - ce_clean,
            "you compared the spliced loss with the clean one only (CE clean / CE spliced); the score is measured against zero ablation.": lambda ce_clean, ce_zero, ce_spliced: ce_clean / ce_spliced,
        },
        hint="score = (CE zero ablation - CE spliced) / (CE zero ablation - CE clean): 1 = the SAE loses nothing, 0 = as bad as zeroing the activation.",
        success="your CE loss score matches",
        atol=1e-6,
    )


# 07.5 (dead latents) ---------------------------------------------------------------------------------


def _dead(acts, *, how):
    if how == "entries":
        return (acts == 0).float().mean().item()
    if how == "some_token":
        return (acts == 0).any(0).float().mean().item()
    if how == "count":
        return int((acts > 0).any(0).logical_not().sum())
    if how == "alive":
        return (acts > 0).any(0).float().mean().item()
    raise ValueError(how)


def check_dead_fraction(learner: Callable, acts: Float[Tensor, "n d_sae"]) -> None:
    """``dead_fraction(acts)``: the fraction of latents that never fire on any token of the window, a float."""
    seed = fresh_seed()
    cases = [dict(acts=acts)]
    for i, (n, d_sae) in enumerate(((30, 24), (8, 33))):
        latents = sparse_latents(seed + i, n=n, d_sae=d_sae)
        dense = torch.randperm(d_sae, generator=_gen(seed + i))[:3]
        latents[:, dense] = 0.5 + torch.rand(n, 3, generator=_gen(seed + i))  # a few latents fire on every token
        cases.append(dict(acts=latents))
    check_function(
        "07.5",
        learner,
        lambda acts: sae_lib.dead_latents(acts).float().mean().item(),
        cases,
        mistakes={
            "you returned the fraction of zero *entries*; a latent is dead only if it is zero on every token: (acts > 0).any(0) says which latents are alive.": lambda **c: _dead(**c, how="entries"),
            "you counted latents that are silent on *some* token; dead means silent on *all* tokens of the window.": lambda **c: _dead(**c, how="some_token"),
            "you returned the number of dead latents; divide by the number of latents to get a fraction.": lambda **c: _dead(**c, how="count"),
            "you returned the fraction of *alive* latents; dead fraction = 1 - that.": lambda **c: _dead(**c, how="alive"),
        },
        hint="a latent is dead if it fires (> 0) on no token: ~(acts > 0).any(0), then the mean as a float.",
        success="your dead-latent fraction matches",
    )
