"""Checks of notebook 05 (the logit lens and the tuned lens).

Each check runs the learner's function on the notebook's example and on fresh random inputs:
a fresh tiny model whose every parameter is random (the final layer norm's weight and bias
and the unembedding bias included, nothing folded), so that forgetting any of them changes
the answer, or random logits with many ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer

from mi_course import lens, residual
from mi_course.checks.core import fresh_seed, separating_case
from mi_course.checks.nb01 import _check, random_model

__all__ = ["check_answer_rank", "check_head_logits", "check_kl_final_to_lens", "check_logit_lens_layer", "random_case"]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "05.1": ("mi_course.lens.decode", "mi_course.lens.logit_lens"),
    "05.2": ("mi_course.lens.answer_rank",),
    "05.3": ("mi_course.lens.component_logits",),
    "05.4": ("mi_course.lens.kl_to_final", "mi_course.lens.kl_per_layer"),
}


def random_case(seed: int) -> dict:
    """A random unfolded 2-layer model (LN weights and b_U random), its cache on random tokens, and a generator."""
    model = random_model(seed, fold=False)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 8), generator=gen)
    _, cache = model.run_with_cache(tokens)
    return dict(model=model, cache=cache, gen=gen)


def _resid(model: HookedTransformer, cache: ActivationCache, layer: int) -> Tensor:
    return cache[lens.resid_hook_names(model)[layer]]


# 05.1 ---------------------------------------------------------------------------------


def _lens_layer(model, cache, layer, *, ln="fresh", weights=True, bias=True, post=False):
    resid = cache[f"blocks.{layer}.hook_resid_post"] if post else _resid(model, cache, layer)
    if ln == "fresh":
        centred = resid - resid.mean(-1, keepdim=True)
        normed = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    elif ln == "cached":
        normed = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
    else:
        normed = resid
    if weights and ln != "none":
        normed = normed * model.ln_final.w + model.ln_final.b
    return normed @ model.W_U + (model.b_U if bias else 0)


def _lens_reference(model, cache, layer):
    return lens.decode(model, _resid(model, cache, layer))


_LENS_MISTAKES = {
    "you forgot the final layer norm: apply model.ln_final to the residual before the unembedding.": lambda **c: _lens_layer(**c, ln="none"),
    "you used the final layer norm's scale from the cache (ln_final.hook_scale): that is the scale of the *final* residual. "
    "The logit lens recomputes the norm for the residual it reads (call model.ln_final on it).": lambda **c: _lens_layer(**c, ln="cached"),
    "you forgot the unembedding bias: add model.b_U after multiplying by W_U.": lambda **c: _lens_layer(**c, bias=False),
    "you normalised but left out the layer norm's weight and bias (model.ln_final.w, .b); calling model.ln_final does it all.": lambda **c: _lens_layer(**c, weights=False),
    "off by one layer: layer l reads blocks.{l}.hook_resid_pre, the stream before the layer, not its hook_resid_post.": lambda **c: _lens_layer(**c, post=True),
}


def _lens_case(seed: int, layer: int) -> dict:
    task = random_case(seed)
    task.pop("gen")
    return dict(task, layer=layer)


def check_logit_lens_layer(learner: Callable, model: HookedTransformer, cache: ActivationCache) -> None:
    """``logit_lens_layer(model, cache, layer)``: the residual that layer ``layer`` reads, decoded."""
    cases = [dict(model=model, cache=cache, layer=1)]
    for layer in (0, 1):  # every layer, so that a fixed one does not pass
        cases.append(separating_case(lambda s, layer=layer: _lens_case(s, layer), _lens_reference, _LENS_MISTAKES.values(), fresh_seed()))
    _check(
        "05.1",
        learner,
        _lens_reference,
        cases,
        mistakes=_LENS_MISTAKES,
        hint="decode cache['resid_pre', layer] with model.ln_final, then W_U and b_U: [batch, pos, d_vocab].",
        success="your logit lens matches",
    )


# 05.2 ---------------------------------------------------------------------------------


def _rank(logits, answers, *, how):
    answer_logit = logits.gather(-1, answers.unsqueeze(-1))
    if how == "zero":
        return (logits > answer_logit).sum(-1)
    if how == "ties":
        return (logits >= answer_logit).sum(-1) + 1
    if how == "ties_against":
        return (logits >= answer_logit).sum(-1)
    return (logits < answer_logit).sum(-1) + 1


def check_answer_rank(learner: Callable, logits: Float[Tensor, "... d_vocab"], answers: Int[Tensor, "..."]) -> None:
    """``answer_rank(logits, answers)``: 1 + the number of tokens with a strictly larger logit."""
    gen = torch.Generator().manual_seed(fresh_seed())
    shape = (int(torch.randint(2, 5, (1,), generator=gen)), int(torch.randint(3, 7, (1,), generator=gen)))
    tied = torch.randint(0, 6, (*shape, 40), generator=gen).float()  # small integers: many ties
    cases = [
        dict(logits=logits, answers=answers),
        dict(logits=tied, answers=torch.randint(0, 40, shape, generator=gen)),
        dict(logits=torch.randn(*shape, 40, generator=gen), answers=torch.randint(0, 40, shape, generator=gen)),
    ]
    _check(
        "05.2",
        learner,
        lens.answer_rank,
        cases,
        mistakes={
            "off by one: the top token has rank 1, so add 1 to the number of tokens with a larger logit.": lambda **c: _rank(**c, how="zero"),
            "ties: you counted the tokens with a logit >= the answer's (the answer itself and tokens tied with it) and then added 1. Count only strictly larger logits, then add 1.": lambda **c: _rank(**c, how="ties"),
            "ties: counting `>=` includes the answer itself and tokens tied with it; count strictly larger logits, then add 1.": lambda **c: _rank(**c, how="ties_against"),
            "you ranked from the bottom: rank 1 is the *largest* logit, so count the tokens with a larger logit, not a smaller one.": lambda **c: _rank(**c, how="bottom"),
        },
        hint="rank = 1 + (number of tokens whose logit is strictly larger than the answer's), one integer per distribution.",
        success="your ranks match, ties included",
    )


# 05.3 ---------------------------------------------------------------------------------


def _head_logits(model, cache, layer, head, *, scale="cached", centre=True, weight=True, b_U=False, b_O=False):
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    if b_O:
        out = out + model.b_O[layer]
    if scale == "own":
        out = model.ln_final(out)
        weight = False
    else:
        if centre:
            out = out - out.mean(-1, keepdim=True)
        if scale == "cached":
            out = out / cache["ln_final.hook_scale"][:, -1]
    if weight:
        out = out * model.ln_final.w
    return out @ model.W_U + (model.b_U if b_U else 0)


def _head_logits_reference(model, cache, layer, head):
    return lens.component_logits(model, cache, residual.head_outputs(model, cache, layer)[:, -1, head])


_HEAD_LOGITS_MISTAKES = {
    "you applied model.ln_final to the head's output on its own: its scale would come from the head alone. "
    "Divide by the final residual's scale from the cache (ln_final.hook_scale) instead.": lambda **c: _head_logits(**c, scale="own"),
    "you forgot the final layer norm's scale: divide the centred output by cache['ln_final.hook_scale'][:, -1].": lambda **c: _head_logits(**c, scale="none"),
    "you added the unembedding bias b_U: it belongs to no component, so a component's direct logits leave it out.": lambda **c: _head_logits(**c, b_U=True),
    "you added b_O: that bias belongs to the whole attention layer, not to one head.": lambda **c: _head_logits(**c, b_O=True),
    "you forgot to centre the head's output (subtract its mean over d_model): the layer norm centres everything it reads.": lambda **c: _head_logits(**c, centre=False),
    "you left out the final layer norm's weight: multiply by model.ln_final.w before W_U.": lambda **c: _head_logits(**c, weight=False),
}


def _head_logits_case(seed: int) -> dict:
    task = random_case(seed)
    gen = task.pop("gen")
    layer = int(torch.randint(0, task["model"].cfg.n_layers, (1,), generator=gen))
    head = int(torch.randint(0, task["model"].cfg.n_heads, (1,), generator=gen))
    return dict(task, layer=layer, head=head)


def check_head_logits(learner: Callable, model: HookedTransformer, cache: ActivationCache, layer: int, head: int) -> None:
    """``head_logits(model, cache, layer, head)``: one head's output at the last position, decoded with the frozen final scale."""
    cases = [
        dict(model=model, cache=cache, layer=layer, head=head),
        separating_case(_head_logits_case, _head_logits_reference, _HEAD_LOGITS_MISTAKES.values(), fresh_seed()),
    ]
    _check(
        "05.3",
        learner,
        _head_logits_reference,
        cases,
        mistakes=_HEAD_LOGITS_MISTAKES,
        hint="head output z[:, -1, head] @ W_O[layer, head], centred, / frozen final scale, * ln_final.w, @ W_U (no biases): [batch, d_vocab].",
        success="your head's direct logits match",
    )


# 05.4 ---------------------------------------------------------------------------------


def _kl(final_logits, lens_logits, *, how):
    logp, logq = final_logits.log_softmax(-1), lens_logits.log_softmax(-1)
    p, q = logp.exp(), logq.exp()
    if how == "swapped":
        return (q * (logq - logp)).sum(-1)
    if how == "probs":
        return (p * (p - q)).sum(-1)
    if how == "logits":
        return (p * (final_logits - lens_logits)).sum(-1)
    if how == "bits":
        return (p * (logp - logq)).sum(-1) / math.log(2)
    return (p * (logp - logq)).mean(-1)


def check_kl_final_to_lens(learner: Callable, final_logits: Float[Tensor, "... d_vocab"], lens_logits: Float[Tensor, "... d_vocab"]) -> None:
    """``kl_final_to_lens(final_logits, lens_logits)``: KL(final || lens) in nats, one value per distribution."""
    gen = torch.Generator().manual_seed(fresh_seed())
    shape = (int(torch.randint(2, 5, (1,), generator=gen)), int(torch.randint(3, 7, (1,), generator=gen)), 30)
    cases = [
        dict(final_logits=final_logits, lens_logits=lens_logits),
        dict(final_logits=2 * torch.randn(shape, generator=gen), lens_logits=2 * torch.randn(shape, generator=gen) + 1),
    ]

    def reference(final_logits, lens_logits):
        logp = final_logits.log_softmax(-1)
        return (logp.exp() * (logp - lens_logits.log_softmax(-1))).sum(-1)

    _check(
        "05.4",
        learner,
        reference,
        cases,
        mistakes={
            "the arguments are swapped: you computed KL(lens || final). Weight by the *final* distribution: sum p_final (log p_final - log p_lens).": lambda **c: _kl(**c, how="swapped"),
            "you subtracted probabilities, not log-probabilities: use log_softmax for the log terms.": lambda **c: _kl(**c, how="probs"),
            "you subtracted raw logits: logits are log-probabilities only up to a constant per distribution; use log_softmax.": lambda **c: _kl(**c, how="logits"),
            "your KL is in bits (log base 2); use natural logarithms (nats), as log_softmax gives them.": lambda **c: _kl(**c, how="bits"),
            "you averaged over the vocabulary; KL *sums* over tokens (then average over positions only when asked).": lambda **c: _kl(**c, how="mean"),
        },
        hint="KL(final || lens) = sum over the vocabulary of p_final * (log p_final - log p_lens), one value per distribution (shape = logits.shape[:-1]).",
        success="your KL divergence matches",
    )
