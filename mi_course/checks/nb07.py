"""Checks of notebook 07 (sparse autoencoders).

Each check runs the learner's answer on the notebook's example and on fresh random inputs: a
small TopK SAE whose every parameter is random (both biases included, so forgetting either
shows), pre-activations with fewer positive entries than k (so forgetting the ReLU shows), and
random latent activations for the choice of control latents. The prediction of 07.3 is graded
by running the splice it is about; the interpretations (07.4, 07.7) against sealed answers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from mi_course import sae as sae_lib
from mi_course.checks.core import CheckFailed, call_learner, check_choice, fresh_seed, passed
from mi_course.checks.nb01 import _check

__all__ = [
    "CONFOUND_OPTIONS",
    "INTERVENTION_OPTIONS",
    "SPLICE_OPTIONS",
    "check_ablate_latent",
    "check_confound",
    "check_control_latents",
    "check_dimensionality",
    "check_encode_decode",
    "check_intervention",
    "check_splice_prediction",
    "random_sae",
    "sparse_latents",
    "splice_cost_option",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "07.1": ("mi_course.sae.SAE.encode", "mi_course.sae.SAE.decode", "mi_course.sae.SAE.forward"),
    "07.2": ("mi_course.sae.feature_dimensionality",),
    "07.5": ("mi_course.sae.edit_activation", "mi_course.sae.run_with_latent_edit", "mi_course.sae.zero_latents"),
    "07.6": ("mi_course.sae.matched_random_latents",),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_latents(seed: int, n: int = 50, d_sae: int = 24) -> Tensor:
    """Non-negative latents, mostly zero, with a few latents that never fire and sizes spread over a wide range."""
    gen = _gen(seed)
    scale = torch.exp(2 * torch.randn(d_sae, generator=gen))  # mean activations from about 0.02 to 50
    acts = torch.relu(torch.randn(n, d_sae, generator=gen) - 0.5) * scale
    dead = torch.randperm(d_sae, generator=gen)[: d_sae // 4]
    acts[:, dead] = 0.0
    return acts


def random_sae(seed: int, d_in: int = 6, d_sae: int = 16, k: int | None = None) -> sae_lib.SAE:
    """An SAE with random, independent encoder, decoder and biases (nothing at its initial value)."""
    gen = _gen(seed)
    model = sae_lib.SAE(d_in, d_sae, k=k, seed=seed)
    with torch.no_grad():
        model.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        model.b_enc.copy_(0.3 * torch.randn(d_sae, generator=gen) - 0.2)
        model.b_dec.copy_(2.0 * torch.randn(d_in, generator=gen))
        model.normalize_decoder_()
    return model


# 07.1 (a TopK SAE's forward pass) -------------------------------------------------------------------------


def _encode_decode(sae, x, *, sub_b_dec=True, relu=True, add_b_dec=True, w_dec=False, largest=True, topk=True):
    pre = ((x - sae.b_dec) if sub_b_dec else x) @ (sae.W_dec.T if w_dec else sae.W_enc) + sae.b_enc
    acts = torch.relu(pre) if relu else pre
    if topk:
        top = acts.topk(sae.k, dim=-1, largest=largest)
        acts = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
    return acts, acts @ sae.W_dec + (sae.b_dec if add_b_dec else 0)


def check_encode_decode(learner: Callable, sae: sae_lib.SAE, x: Float[Tensor, "n d_in"]) -> None:
    """``encode_decode(sae, x)``: a TopK SAE's latents f and reconstruction x_hat, as a tuple."""
    if getattr(sae, "k", None) is None:
        raise ValueError("07.1 is about a TopK SAE: pass an SAE built with k.")
    seed = fresh_seed()
    gen = _gen(seed)
    fresh = random_sae(seed, d_in=6, d_sae=16, k=int(torch.randint(3, 7, (1,), generator=gen)))
    tight = random_sae(seed + 1, d_in=5, d_sae=12, k=9)  # more latents kept than are positive
    with torch.no_grad():
        tight.b_enc.sub_(1.0)
    cases = [
        dict(sae=sae, x=x),
        dict(sae=fresh, x=torch.randn(9, fresh.d_in, generator=gen) + 1.0),
        dict(sae=tight, x=torch.randn(2, 4, tight.d_in, generator=gen)),
    ]

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
            "you forgot to subtract the decoder bias before encoding: the encoder reads x - b_dec.": wrap(sub_b_dec=False),
            "you forgot the ReLU: when fewer than k pre-activations are positive, negative values slip into the top k. Latents are never negative.": wrap(relu=False),
            "you forgot to add b_dec back when decoding: x_hat = f @ W_dec + b_dec.": wrap(add_b_dec=False),
            "you encoded with the decoder (W_dec.T); the encoder has its own weights, sae.W_enc.": wrap(w_dec=True),
            "you kept the k *smallest* activations: keep the k largest of each token (topk's default).": wrap(largest=False),
            "you kept every positive latent: a TopK SAE keeps only the k largest of each token (sae.k), zero elsewhere.": wrap(topk=False),
        },
        hint="pre = (x - b_dec) @ W_enc + b_enc; f = the k largest of ReLU(pre) on the last dimension, scattered into zeros; x_hat = f @ W_dec + b_dec; return (f, x_hat).",
        success="your TopK SAE forward pass matches",
    )


# 07.2 (feature dimensionality of the toy model) -----------------------------------------------------------


def dimensionality_cases(W_example: Tensor, seed: int) -> list[dict]:
    """The notebook's embeddings, then fresh ones: random (non-square, both signs, a batch
    dimension), and planted layouts whose answers are known (an unused feature, an antipodal
    pair, three features in a plane, a feature alone with a large norm)."""
    gen = torch.Generator().manual_seed(seed)
    d, n = 3 + int(torch.randint(0, 4, (1,), generator=gen)), 8 + int(torch.randint(0, 5, (1,), generator=gen))
    random_W = torch.randn(2, d, n, generator=gen) * (0.2 + 2 * torch.rand(2, 1, n, generator=gen))
    random_W[0, :, 0] = 0.0  # a feature that is not represented
    e = torch.eye(4)
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    planted = torch.cat([3.0 * e[:, :1], e[:, 1:2], -0.7 * e[:, 1:2], torch.stack([angles.cos(), angles.sin(), 0 * angles, 0 * angles]), 0.0 * e[:, :1]], dim=1)
    return [dict(W=W_example), dict(W=random_W), dict(W=planted)]


def check_dimensionality(learner: Callable, W_example: Tensor) -> None:
    """07.2: ``feature_dimensionality(W)``, per feature, on ``[..., d_hidden, n_features]`` embeddings."""

    def unnormalised(W):  # overlaps with the raw embedding, not its direction
        norms = W.norm(dim=-2)
        return torch.nan_to_num(norms.pow(2) / (W.transpose(-1, -2) @ W).pow(2).sum(-1), nan=0.0)

    def without_itself(W):  # the feature's own overlap left out of the sum
        norms = W.norm(dim=-2)
        unit = W / norms.clamp(min=1e-8).unsqueeze(-2)
        overlaps = (unit.transpose(-1, -2) @ W).pow(2)
        rest = overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)
        return torch.where(norms > 1e-6, norms.pow(2) / rest.clamp(min=1e-12), torch.zeros_like(norms))

    def norm_not_squared(W):
        norms = W.norm(dim=-2)
        unit = W / norms.clamp(min=1e-8).unsqueeze(-2)
        overlaps = (unit.transpose(-1, -2) @ W).pow(2).sum(-1)
        return torch.where(norms > 1e-6, norms / overlaps.clamp(min=1e-12), torch.zeros_like(norms))

    def overlaps_not_squared(W):
        norms = W.norm(dim=-2)
        unit = W / norms.clamp(min=1e-8).unsqueeze(-2)
        overlaps = (unit.transpose(-1, -2) @ W).abs().sum(-1)
        return torch.where(norms > 1e-6, norms.pow(2) / overlaps.clamp(min=1e-12), torch.zeros_like(norms))

    def reference(W):
        return sae_lib.feature_dimensionality(W)

    _check(
        "07.2",
        learner,
        reference,
        dimensionality_cases(W_example, fresh_seed()),
        mistakes={
            "the overlaps in the denominator use the raw embedding W_i: project each W_j on feature i's *direction* W_i / |W_i|.": unnormalised,
            "you left the feature itself out of the sum: its own overlap |W_i|^2 belongs in the denominator (a feature alone on its dimension gets 1, not infinity).": without_itself,
            "the numerator is the squared norm |W_i|^2, not the norm.": norm_not_squared,
            "square each overlap before summing: the sum is over (W_i / |W_i| . W_j)^2.": overlaps_not_squared,
        },
        hint="D_i = |W_i|^2 / sum_j (W_i / |W_i| . W_j)^2 over all features j (itself included), with W_i the column of feature i; a feature with |W_i| = 0 gets 0, not NaN.",
        success="your feature dimensionality matches (a feature alone on its dimension: 1; an antipodal pair: 1/2 each)",
    )


# 07.3 (prediction: the cost of splicing the SAE in) ------------------------------------------------------

SPLICE_OPTIONS = {
    "A": "under 0.01 nats: an explained variance above 0.9 leaves the loss as it is",
    "B": "between 0.01 and 0.2 nats",
    "C": "between 0.2 and 1 nats",
    "D": "over 1 nat: the model falls apart",
}
_SPLICE_BOUNDS = ((0.01, "A"), (0.2, "B"), (1.0, "C"))


def splice_cost_option(delta_ce: float) -> str:
    """The option of ``SPLICE_OPTIONS`` that a loss increase (in nats) falls in."""
    return next((letter for bound, letter in _SPLICE_BOUNDS if delta_ce < bound), "D")


def check_splice_prediction(prediction, model, sae, tokens, hook_name: str, *, graded: bool = True) -> float:
    """Grade a prediction (one of ``SPLICE_OPTIONS``) of the loss increase when ``sae`` replaces the activation.

    The truth is measured here, by running the model clean and with the SAE spliced in. Returns it.
    ``graded=False`` (the question is about toy-lm; another model is at hand) only measures and
    says so.
    """
    if prediction is None:
        raise CheckFailed("07.3", "no answer yet: set prediction to one letter in the exercise cell above.", "no-answer")
    if not isinstance(prediction, str) or prediction.strip().upper() not in SPLICE_OPTIONS:
        raise CheckFailed("07.3", f"give one letter as a string, one of {sorted(SPLICE_OPTIONS)}, not {prediction!r}.")
    with torch.no_grad():
        ce = sae_lib.ce_loss_score(model, sae, tokens, hook_name)
    delta = ce["CE spliced"] - ce["CE clean"]
    if not graded:
        print(f"the loss rises by {delta:.3f} nats on this model; the question is about toy-lm, so this prediction is not graded here")
        return delta
    truth = splice_cost_option(delta)
    got = prediction.strip().upper()
    if got != truth:
        hint = {
            "A": "explained variance is a share of the activation's variance; the model downstream can be sensitive to the part that is left.",
            "D": "an SAE that explains most of the variance keeps most of what the model needs; the CE loss score of a good SAE is close to 1.",
        }.get(got, "close, but the measured increase falls in another band; think about how much a few percent of unexplained variance costs downstream.")
        raise CheckFailed("07.3", f"not what the run shows. {hint}")
    passed("07.3", f"your prediction matches: the loss rises by {delta:.3f} nats ({ce['CE clean']:.3f} -> {ce['CE spliced']:.3f})")
    return delta


# 07.5 (ablate one latent, error term kept) ---------------------------------------------------------------


def _ablate_reference(sae, x, latent):
    with torch.no_grad():
        return sae_lib.edit_activation(sae, x, sae_lib.zero_latents(latent))


def _ablate_wrong(sae, x, latent, *, how):
    with torch.no_grad():
        f = sae.encode(x)
        edited = f.clone()
        edited[..., latent] = 0
        if how == "no_error":
            return sae.decode(edited)
        if how == "unscaled":
            return x - sae.W_dec[latent]
        if how == "encoder":
            return x - f[..., latent : latent + 1] * sae.W_enc[:, latent]
        if how == "unchanged":
            return x.clone()
    raise ValueError(how)


def check_ablate_latent(learner: Callable, sae: sae_lib.SAE, x: Float[Tensor, "n d_in"], latent: int) -> None:
    """``ablate_latent(sae, x, latent)``: x with one latent set to zero and the SAE's error term kept."""
    seed = fresh_seed()
    gen = _gen(seed)
    fresh = random_sae(seed, d_in=7, d_sae=18, k=5)
    x_fresh = torch.randn(3, 5, fresh.d_in, generator=gen) * 2
    with torch.no_grad():
        fires = (fresh.encode(x_fresh) > 0).reshape(-1, fresh.d_sae).float().mean(0)
    cases = [
        dict(sae=sae, x=x, latent=latent),
        dict(sae=fresh, x=x_fresh, latent=int(fires.argmax())),  # a latent that fires on many tokens
    ]
    _check(
        "07.5",
        learner,
        _ablate_reference,
        cases,
        mistakes={
            "you returned the SAE's reconstruction with the latent removed: the reconstruction error is lost too. Keep it: add x - x_hat back.": lambda **c: _ablate_wrong(**c, how="no_error"),
            "you subtracted the whole decoder direction from every token: remove the latent's contribution, its activation times its direction, and nothing where it does not fire.": lambda **c: _ablate_wrong(**c, how="unscaled"),
            "you removed the latent along its encoder direction; its contribution to the activation is along its decoder direction (a row of W_dec).": lambda **c: _ablate_wrong(**c, how="encoder"),
            "your result is x unchanged: the latent's contribution has to go.": lambda **c: _ablate_wrong(**c, how="unchanged"),
        },
        hint="encode x, zero the latent, decode both the edited and the original latents, and return x plus the difference of the two decodings.",
        success="your latent ablation matches (and with the error term kept, it changes only what the latent wrote)",
    )


# 07.6 (design: control latents) ----------------------------------------------------------------------------


def _mean_size(acts: Tensor) -> Tensor:
    fires = acts > 0
    return (acts * fires).sum(0) / fires.sum(0).clamp(min=1)


def check_control_latents(learner: Callable, acts: Float[Tensor, "n d_sae"], latent: int, n: int = 10, factor: float = 2.0) -> list[int]:
    """``control_latents(acts, latent, n)``: n other live latents of similar activation size (within ``factor``).

    Run on the notebook's latents and on fresh random ones; checks what makes the control valid.
    Returns the learner's controls on the notebook's latents.
    """
    seed = fresh_seed()
    fresh = sparse_latents(seed, n=60, d_sae=400)
    sizes = _mean_size(fresh)
    order = sizes.argsort()
    fresh_latent = int(order[len(order) * 2 // 3])  # a live latent with plenty of others near its size
    chosen = None
    for i, (a, target, m) in enumerate(((acts.reshape(-1, acts.shape[-1]), latent, n), (fresh, fresh_latent, 6))):
        got = call_learner("07.6", learner, a, target, m, unchanged=("0",), unchanged_hint="do not modify the activations you are given.")
        try:
            got = [int(g) for g in (got.tolist() if isinstance(got, Tensor) else got)]
        except (TypeError, ValueError):
            raise CheckFailed("07.6", f"return a list of {m} latent indices (integers), got {type(got).__name__}.") from None
        size = _mean_size(a)
        if len(got) != m:
            raise CheckFailed("07.6", f"asked for {m} control latents, got {len(got)}.")
        if len(set(got)) != m:
            raise CheckFailed("07.6", "a latent appears twice among your controls: each control should be a different latent.")
        if any(not 0 <= g < a.shape[-1] for g in got):
            raise CheckFailed("07.6", f"latent indices run from 0 to {a.shape[-1] - 1}.")
        if target in got:
            raise CheckFailed("07.6", "your controls include the latent under test itself: a control is a *different* latent.")
        if any(size[g] == 0 for g in got):
            raise CheckFailed("07.6", "some of your controls never fire on these tokens: ablating a dead latent changes nothing, which makes any latent look important by comparison.")
        off = [g for g in got if not size[target] / factor <= size[g] <= size[target] * factor]
        if off:
            raise CheckFailed(
                "07.6",
                f"{len(off)} of your controls fire at a very different size (their mean activation where they fire is more than a factor {factor:g} away from the tested latent's): "
                "a bigger latent moves the activation more, so the comparison would not be like for like.",
            )
        if i == 0:
            chosen = got
    passed("07.6", "your controls are other live latents of the same activation size: removing them is as large an edit")
    return chosen


# 07.4 and 07.7 (interpretations) -----------------------------------------------------------------------

CONFOUND_OPTIONS = {
    "A": "the latent detects the main verb of a sentence in context: its AUC is near 1 on held-out tokens",
    "B": "the score says little about context: the word itself predicts the label about as well, so a latent that reads the word would score the same",
    "C": "the SAE is broken: no latent should reach an AUC this high",
    "D": "the token-identity baseline is unfair: it was fitted on the labels, the latent was not",
}
_CONFOUND_SEALED = (
    "6f5ceb562eb16caf",
    "c7e2a250a5a5b945c049a40705646add",
    "o7F+4/TSg6os90Vr23LPTrpWnYNYjbuTKpLkPHmcvOPsBnNCNd2B9exua55I15MIwxKfYcsy22ypAuiay2c3UmnSIAB7UansYmLgakriS8443GBJck+QKi3Z/cmyldmcm6d06GlWcDxN5zCOw16EcscCLZrdFOm7kaChaYx96rKNWwLU9Qb3saXAx66wipib5W8PUPOlaGExc/u27GaIAjjNq8iIGsCQr3Y0epDBAO3hzVqtjv3zGg4QXDtivH/zMmuaFJ/9KtGLj4nYuXYXKnZ00ZgGkX63DEM=",
)
_CONFOUND_HINTS = {
    "A": "a high AUC on held-out tokens shows the latent tracks the label; compare it with what the word alone achieves.",
    "C": "a latent that fires on a handful of words can reach AUC 1 honestly; the question is what the label adds to the word.",
    "D": "the latent was picked among hundreds for this label on training tokens, which is also a fit; and the baseline is scored on held-out tokens too.",
}


def check_confound(answer) -> str:
    """07.4: what a near-perfect AUC for the role 'verb' shows, next to the token-identity baseline."""
    return check_choice("07.4", answer, CONFOUND_OPTIONS, _CONFOUND_SEALED, hints=_CONFOUND_HINTS)


INTERVENTION_OPTIONS = {
    "A": "the latent is the model's agreement mechanism: without it the model cannot agree",
    "B": "the latent has no causal role: the effect is no bigger than that of random latents",
    "C": "the latent carries part of the subject's number and the model uses it, but other directions carry number too",
    "D": "the effect is an artefact of splicing the SAE in, which changes the model's output by itself",
}
_INTERVENTION_SEALED = (
    "f305e6b68b779316",
    "150d2bb6d6511bad233e909a351c2986",
    "AoBbNTz4HOuzuevOIp8SoiPPBYJ4aVXpRGuXE9cFRgyl9uXsEznLSP1iR6ajsn2qaqj35AC+xzDboYgk9roDEaaODUfXxk0O0kZex1TPxmE8fkOC3Vld/RXqkDvLyrMpAdLV6Burw6D8ee3I+jl37dzfMn+2N5Hy1IVcP+m2CW9I4oT4o7Xuvq199Alh1SpIvZ9Z25ASGLaf45BIeZphh/QybEqUf3lmkCxTly1HVOiQPhuWECt+FCG++1sCf2x+4Yd4psIHb6fZVzKmt2Zo7l5Y6mvZwD4wsyYzRAdI1ShINz6GFvNV1u25iwozj8oZ87pDOrdZwBzRXDDf/w5BnPb8OJoIQXwbn1xGMFyYupvyhah0Kbw=",
)
_INTERVENTION_HINTS = {
    "A": "look at how much of the logit difference survives the ablation.",
    "B": "compare the latent's effect with the controls' in the table: same size of edit, different effect.",
    "D": "the error term is kept: with no edit the spliced model's logits equal the original's (asserted above).",
}


def check_intervention(answer) -> str:
    """07.7: what ablating and steering the agreement latent, against matched random latents, shows (toy-lm)."""
    return check_choice("07.7", answer, INTERVENTION_OPTIONS, _INTERVENTION_SEALED, hints=_INTERVENTION_HINTS)
