"""Checks of notebook 01 (the residual stream and direct logit attribution).

Each check runs the learner's function on the notebook's example and on a fresh tiny model
whose every parameter (biases included) is random, so that forgetting a bias or the layer
norm's scale changes the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig

from mi_course import residual
from mi_course.checks.core import CheckFailed, check_choice, check_function, fresh_seed, guard_hook, passed, separating_case
from mi_course.patching import ablate_head_hook

__all__ = [
    "DIRECT_VS_TOTAL",
    "READING_OPTIONS",
    "check_direct_path_hooks",
    "check_direct_total_reading",
    "check_direct_vs_total",
    "check_head_dla",
    "check_logit_diff_by_layer",
    "drops",
    "random_model",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "01.1": ("mi_course.residual.head_dla", "mi_course.residual.direct_logit_attribution"),
    "01.2": ("mi_course.residual.direct_path_hooks",),
    "01.5": ("mi_course.residual.accumulated_logit_diff",),
}


def random_model(seed: int, *, attn_only: bool = False, fold: bool = True) -> HookedTransformer:
    """A tiny 2-layer model with LayerNorm whose every parameter is random (eval mode).

    ``fold`` folds the layer norms' weights into the next weights and centres the writing
    weights, as the notebook does, so that the final layer norm only divides by its scale.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None if attn_only else 64, n_ctx=16,
        d_vocab=50, act_fn="gelu", normalization_type="LN", attn_only=attn_only, seed=seed,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if name.endswith(".w") else 0.3 * noise)
    if fold:
        model.process_weights_()
    return model.requires_grad_(False).eval()


def _random_task(seed: int) -> dict[str, Any]:
    """A random folded model, its cache on random tokens, and random answer pairs."""
    model = random_model(seed)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 10), generator=gen)
    answers = torch.randint(0, model.cfg.d_vocab, (4,), generator=gen)
    wrong = (answers + torch.randint(1, model.cfg.d_vocab, (4,), generator=gen)) % model.cfg.d_vocab
    _, cache = model.run_with_cache(tokens)
    return dict(model=model, tokens=tokens, cache=cache, answers=answers, wrong_answers=wrong, gen=gen)


def _check(exercise: str, learner: Callable, reference: Callable, cases: list[dict], *, mistakes: dict, **kwargs) -> None:
    """``check_function`` (which names a mistake that reproduces every answer even when it changes the shape)."""
    check_function(exercise, learner, reference, cases, mistakes=mistakes, **kwargs)

# 01.1 ---------------------------------------------------------------------------------


def _dla(model, cache, answers, wrong_answers, layer, head, *, scale=True, wrong=True, sign=1.0):
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    if scale:
        out = out / cache["ln_final.hook_scale"][:, -1]
    direction = model.W_U[:, answers] - (model.W_U[:, wrong_answers] if wrong else 0)
    return sign * (out * direction.T).sum(-1)


def _dla_reference(model, cache, answers, wrong_answers, layer, head):
    return residual.head_dla(model, cache, answers, wrong_answers)[layer, head]


_DLA_MISTAKES = {
    "you forgot the final layer norm's scale: divide the head's output by cache['ln_final.hook_scale'] at the last position.": lambda **c: _dla(**c, scale=False),
    "you projected on W_U[:, answers] alone: the direction is W_U[:, answers] - W_U[:, wrong_answers].": lambda **c: _dla(**c, wrong=False),
    "the sign is flipped: use answer minus wrong answer, not the other way round.": lambda **c: _dla(**c, sign=-1.0),
    "you took the absolute value: a head can push towards the wrong answer, and its DLA is then negative.": lambda **c: _dla(**c).abs(),
}


def _dla_case(seed: int) -> dict:
    task = _random_task(seed)
    gen = task.pop("gen")
    task.pop("tokens")
    layer, head = (int(torch.randint(0, n, (1,), generator=gen)) for n in (2, 4))
    return dict(task, layer=layer, head=head)


def check_head_dla(
    learner: Callable,
    model: HookedTransformer,
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
) -> None:
    """``head_dla(model, cache, answers, wrong_answers, layer, head)``: per-prompt DLA of one head."""
    top = residual.top_components(residual.head_dla(model, cache, answers, wrong_answers).mean(-1), 1)[0]
    cases = [
        dict(model=model, cache=cache, answers=answers, wrong_answers=wrong_answers, layer=top[0], head=top[1]),
        separating_case(_dla_case, _dla_reference, _DLA_MISTAKES.values(), fresh_seed()),
    ]
    check_function(
        "01.1",
        learner,
        _dla_reference,
        cases,
        mistakes=_DLA_MISTAKES,
        hint="DLA = (head output at the last position / frozen final scale) · (W_U[:, answer] - W_U[:, wrong answer]), one number per prompt.",
        success="your direct logit attribution matches",
    )


# 01.2 ---------------------------------------------------------------------------------


def _validated_hooks(hooks: object, model: HookedTransformer) -> list[tuple[str, Callable]]:
    """The learner's hooks as a list of (name, function) pairs, each function guarded against in-place edits."""
    if not isinstance(hooks, (list, tuple)) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in hooks):
        raise CheckFailed("01.2", f"return a list of (hook name, hook function) pairs, as run_with_hooks takes them, not {type(hooks).__name__}.")
    out = []
    for name, fn in hooks:
        if not isinstance(name, str) or name not in model.hook_dict:
            raise CheckFailed("01.2", f"the model has no hook point {name!r}; the names are listed in model.hook_dict (section 2's table).")
        out.append((name, guard_hook("01.2", fn, _IN_PLACE_HINT)))
    return out


_IN_PLACE_HINT = (
    "one of your hooks edits the activation it receives in place: copy it first (`resid = resid.clone()`), "
    "edit the copy and return it."
)


def _direct_diff(factory: Callable, *, model, tokens, cache, answers, wrong_answers, layer, head, learner: bool = False) -> Tensor:
    """Per-prompt logit difference with the hooks ``factory(model, cache, layer, head)`` active."""
    hooks = factory(model, cache, layer, head)
    if learner:
        hooks = _validated_hooks(hooks, model)
    return residual.logit_diff(model.run_with_hooks(tokens, fwd_hooks=list(hooks)), answers, wrong_answers)


def _final(model) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def _freeze(cache):
    return ("ln_final.hook_scale", lambda scale, hook=None: cache["ln_final.hook_scale"].clone())


def _whole_output(model, cache, layer, head):
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    return [(_final(model), residual.remove_part_hook(out, -1)), _freeze(cache)]


def _scale_recomputed(model, cache, layer, head):
    return residual.direct_path_hooks(model, cache, layer, head)[:1]


def _total(model, cache, layer, head):
    return [(f"blocks.{layer}.attn.hook_z", ablate_head_hook(head, "mean"))]


def _too_early(model, cache, layer, head):
    out = residual.head_outputs(model, cache, layer)[:, -1, head]
    return [(f"blocks.{layer}.hook_resid_post", residual.remove_part_hook(out - out.mean(0, keepdim=True), -1)), _freeze(cache)]


def _mean_over_positions(model, cache, layer, head):
    out = residual.head_outputs(model, cache, layer)[:, :, head]
    return [(_final(model), residual.remove_part_hook(out[:, -1] - out.mean(1), -1)), _freeze(cache)]


_DIRECT_MISTAKES = {
    "you removed the head's whole output: that compares it with a zero output, while mean ablation (the total effect) "
    "compares it with its mean output. With two baselines, direct and total would differ in two ways at once; "
    "take away only the head's deviation from its mean over the prompts.": lambda **c: _direct_diff(_whole_output, **c),
    "the final layer norm's scale was recomputed from the edited stream, so your change also rescales every other part: "
    "freeze it at its clean value (a second hook on ln_final.hook_scale returning the cached scale).": lambda **c: _direct_diff(_scale_recomputed, **c),
    "that is the total effect: mean-ablating hook_z lets every later layer read the change. The direct path is the "
    "one from the head straight to the unembedding: edit the final residual stream, after the last layer.": lambda **c: _direct_diff(_total, **c),
    "you edited the stream right after the head's own layer, so later layers read your change: edit the final "
    "residual stream (blocks.{last}.hook_resid_post), after the last layer.": lambda **c: _direct_diff(_too_early, **c),
    "the baseline is the head's mean over the prompts at the same position (as mean ablation uses), not its mean "
    "over positions.": lambda **c: _direct_diff(_mean_over_positions, **c),
}


def _direct_reference(**c) -> Tensor:
    return _direct_diff(residual.direct_path_hooks, **c)


def _direct_case(seed: int) -> dict:
    task = _random_task(seed)
    gen = task.pop("gen")
    layer, head = (int(torch.randint(0, n, (1,), generator=gen)) for n in (1, 4))  # layer 0: a later layer exists
    return dict(task, layer=layer, head=head)


def check_direct_path_hooks(
    learner: Callable,
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
    layer: int,
    head: int,
) -> None:
    """``direct_path_hooks(model, cache, layer, head)``: run on the model, the logit difference must move by the direct effect only."""
    if not callable(learner):
        raise CheckFailed("01.2", f"expected a function, got {type(learner).__name__}.")
    cases = [
        dict(model=model, tokens=tokens, cache=cache, answers=answers, wrong_answers=wrong_answers, layer=layer, head=head),
        separating_case(_direct_case, _direct_reference, _DIRECT_MISTAKES.values(), fresh_seed()),
    ]
    check_function(
        "01.2",
        lambda **c: _direct_diff(learner, **c, learner=True),
        _direct_reference,
        cases,
        mistakes=_DIRECT_MISTAKES,
        atol=1e-3,
        hint="with your hooks the logit difference should change by the head's DLA minus the DLA of its mean output, "
        "and by nothing else: no later layer may see the change, and the final scale stays at its clean value.",
        success="your hooks change the logit difference by the head's direct effect, against its mean output",
    )


# 01.3 ---------------------------------------------------------------------------------

DIRECT_VS_TOTAL = {
    "A": "about the same as the direct drop (within 20%)",
    "B": "clearly larger than the direct drop (more than 1.2 times it)",
    "C": "clearly smaller than the direct drop (less than 0.8 times it)",
}


def drops(model: HookedTransformer, tokens, cache, answers, wrong_answers, layer: int, head: int) -> tuple[float, float]:
    """Mean drop of the logit difference when the head is mean-ablated on its direct path only, and everywhere."""
    clean = residual.logit_diff(model.run_with_hooks(tokens, fwd_hooks=[]), answers, wrong_answers)
    direct = residual.logit_diff(model.run_with_hooks(tokens, fwd_hooks=residual.direct_path_hooks(model, cache, layer, head)), answers, wrong_answers)
    total = residual.logit_diff(model.run_with_hooks(tokens, fwd_hooks=_total(model, cache, layer, head)), answers, wrong_answers)
    return (clean - direct).mean().item(), (clean - total).mean().item()


def _direct_vs_total_option(direct: float, total: float) -> str:
    """The option of DIRECT_VS_TOTAL that holds: the ratio of total to direct drop (sign-safe for a negative direct drop)."""
    if abs(direct) < 1e-6:
        return "A" if abs(total) < 1e-6 else "B"
    ratio = total / direct
    return "B" if ratio > 1.2 else "C" if ratio < 0.8 else "A"


def check_direct_vs_total(prediction: object, model: HookedTransformer, tokens, cache, answers, wrong_answers, *, graded: bool = True) -> None:
    """Grade a prediction of how the top-DLA head's total drop compares with its direct drop, by running both.

    The prediction is about toy-lm; with ``graded=False`` (another model) the check only prints
    which option holds on the model at hand.
    """
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed("01.3", "no prediction yet: fill in the exercise cell above.")
    if not isinstance(prediction, str) or prediction.strip().upper() not in DIRECT_VS_TOTAL:
        raise CheckFailed("01.3", f"give one letter as a string, one of {sorted(DIRECT_VS_TOTAL)}, not {prediction!r}.")
    layer, head = residual.top_components(residual.head_dla(model, cache, answers, wrong_answers).mean(-1), 1)[0]
    direct, total = drops(model, tokens, cache, answers, wrong_answers, layer, head)
    truth = _direct_vs_total_option(direct, total)
    if not graded:
        print(
            f"01.3 not graded on this model (the prediction is about toy-lm): here the top head L{layer}H{head}'s total drop "
            f"({total:+.2f}) is {DIRECT_VS_TOTAL[truth]} ({direct:+.2f}); you predicted {prediction.strip().upper()}."
        )
        return
    if prediction.strip().upper() == truth:
        passed("01.3", f"on this model the top head L{layer}H{head}'s total drop is {DIRECT_VS_TOTAL[truth]}. The next cell shows the figures.")
        return
    hints = {
        "B": "every later layer reads what the head writes; when the head is mean-ablated they read something else too, "
        "and their own pushes on the logits change. Does the direct path capture that?",
        "C": "later components can make up for part of a loss (as backup heads do), so the total drop can fall short of the direct one.",
        "A": "on this model, later layers hardly react to the head's change.",
    }
    raise CheckFailed("01.3", f"not on this model. {hints[truth]}")


# 01.4 ---------------------------------------------------------------------------------

READING_OPTIONS = {
    "A": "Part of each top head's effect runs through later layers, which the direct path, and so DLA, does not see.",
    "B": "DLA is wrong here: with the scale frozen it should equal the total effect.",
    "C": "The top heads write the IO name straight into the logits; later layers add nothing.",
    "D": "The gap shows that mean ablation and removing the direct path use different baselines.",
}
SEALED_READING = (
    "c1f9eac50ddca93c",
    "3e5dbdf09cf11d813734acd0729f90d5",
    "tOMof8xtuz5dJWf3GxBqsEa/DfC7UVhxZVi0A5odysIv62WmqGRkXCuXTGkupkaU6YLppEAd96xE1qDqAfSFZMNIKTwi9BCceIyWDYOQhTy61tp/Y+FmIFtE/ecjTXywXj9oYd1i8y5qBON5zPpU9TfTdmGM9ZwwFPeDxs5j2OnVMnyn63ipammeYAMm9El98s/RI1WRdsMSimtQq7U36A7AJuVPvqgCSbpVILbVwNqbVlnMUPwwxxaxnLUy+l36KGDPdngm35aF3bHHsvp7I27In7moiSRQL1SKeCCRAQMvDmSci4ygVshaYaXRKOWg9eVGcoPa8oOaIMVQfw9LzzwI+rvXFxupQmwlzs/QL3Snwi4l+0WevZPR",
)
READING_HINTS = {
    "B": "DLA measures the direct path by construction (the direct drop reproduced it); the total effect also counts every path through later layers.",
    "C": "if later layers added nothing, the total drop would equal the direct drop; it is larger for every top head.",
    "D": "both experiments replace the head's output by the same mean over the prompts; they differ only in what is held fixed.",
}


def check_direct_total_reading(got: object) -> None:
    """Which reading the direct-versus-total table of toy-lm supports (one letter)."""
    check_choice("01.4", got, READING_OPTIONS, SEALED_READING, hints=READING_HINTS)


# 01.5 ---------------------------------------------------------------------------------


def _by_layer(model, cache, answers, wrong_answers, *, scale="frozen", offset=True):
    resid, _ = residual.accumulated_resid(model, cache)
    if scale == "frozen":
        resid = resid / cache["ln_final.hook_scale"][:, -1]
    elif scale == "own":
        centred = resid - resid.mean(-1, keepdim=True)
        resid = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    diffs = (resid * (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T).sum(-1)
    return diffs + (model.b_U[answers] - model.b_U[wrong_answers]) * offset


def _by_layer_reference(**c) -> Tensor:
    return residual.accumulated_logit_diff(**c)[0]


_BY_LAYER_MISTAKES = {
    "you forgot the final layer norm's scale: divide every running sum by the frozen scale cache['ln_final.hook_scale'][:, -1].": lambda **c: _by_layer(**c, scale="none"),
    "you recomputed the layer norm at each layer: that is the logit lens proper (next notebooks); here keep the final scale frozen, so that the entries add up DLA.": lambda **c: _by_layer(**c, scale="own"),
    "you left out the unembedding bias: add b_U[answers] - b_U[wrong_answers] to every entry.": lambda **c: _by_layer(**c, offset=False),
    "you left out row 0, the embeddings alone: start with blocks.0.hook_resid_pre.": lambda **c: _by_layer(**c)[1:],
}


def _by_layer_case(seed: int) -> dict:
    task = _random_task(seed)
    task.pop("gen")
    task.pop("tokens")
    return task


def check_logit_diff_by_layer(
    learner: Callable,
    model: HookedTransformer,
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
) -> None:
    """``logit_diff_by_layer(model, cache, answers, wrong_answers)``: [n_layers + 1, batch]."""
    cases = [
        dict(model=model, cache=cache, answers=answers, wrong_answers=wrong_answers),
        separating_case(_by_layer_case, _by_layer_reference, _BY_LAYER_MISTAKES.values(), fresh_seed()),
    ]
    _check(
        "01.5",
        learner,
        _by_layer_reference,
        cases,
        mistakes=_BY_LAYER_MISTAKES,
        hint="one row per running sum (embeddings, after layer 0, ..., after the last layer), one column per prompt; the last row is the model's logit difference.",
        success="the last row is the model's own logit difference",
    )
