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
from mi_course.checks.core import CheckFailed, check_function, fresh_seed, guard_hook, separating_case

__all__ = [
    "check_head_dla",
    "check_head_output",
    "check_logit_diff_by_layer",
    "check_remove_part_hook",
    "check_residual_parts",
    "check_top_heads",
    "random_model",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "01.1": ("mi_course.residual.layer_components",),
    "01.2": ("mi_course.residual.head_outputs",),
    "01.3": ("mi_course.residual.head_dla", "mi_course.residual.direct_logit_attribution"),
    "01.4": ("mi_course.residual.top_components",),
    "01.5": ("mi_course.residual.remove_part_hook",),
    "01.6": ("mi_course.residual.accumulated_logit_diff",),
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


def _parts_reference(model, cache):
    return residual.layer_components(model, cache)[0]


def _no_pos(model, cache):
    return residual.layer_components(model, cache)[0][[0] + list(range(2, 2 + 2 * model.cfg.n_layers))]


def _cumulative(model, cache):
    post = [cache[f"blocks.{layer}.hook_{kind}"] for layer in range(model.cfg.n_layers) for kind in ("resid_mid", "resid_post")]
    return torch.stack([cache["hook_embed"], cache["hook_pos_embed"], *post])


def _attn_only(model, cache):
    return torch.stack([cache["hook_embed"], cache["hook_pos_embed"]] + [cache[f"blocks.{l}.hook_attn_out"] for l in range(model.cfg.n_layers)])


_PARTS_MISTAKES = {
    "you left out the position embeddings (cache['hook_pos_embed']): the stream starts as token plus position embedding.": _no_pos,
    "you stacked the running sums (hook_resid_mid / hook_resid_post), not what each layer adds: use hook_attn_out and hook_mlp_out.": _cumulative,
    "you left out the MLPs: each layer adds its attention output and then its MLP output (hook_mlp_out).": _attn_only,
}


def _parts_case(seed: int) -> dict:
    task = _random_task(seed)
    return dict(model=task["model"], cache=task["cache"])


def check_residual_parts(learner: Callable, model: HookedTransformer, cache: ActivationCache) -> None:
    """``residual_parts(model, cache)``: embeddings, then each layer's attention and MLP output."""
    fresh = separating_case(_parts_case, _parts_reference, _PARTS_MISTAKES.values(), fresh_seed())
    _check(
        "01.1",
        learner,
        _parts_reference,
        [dict(model=model, cache=cache), fresh],
        mistakes=_PARTS_MISTAKES,
        hint="compare your stack with the order asked for: embed, pos_embed, then per layer attention output and MLP output.",
        success="the parts sum to the final residual",
    )


# 01.2 ---------------------------------------------------------------------------------


def _head_reference(model, cache, layer, head):
    return residual.head_outputs(model, cache, layer)[:, :, head]


_HEAD_MISTAKES = {
    "you added the bias b_O: it belongs to the whole attention layer, not to one head, so leave it out here.": lambda model, cache, layer, head: _head_reference(model, cache, layer, head) + model.b_O[layer],
    "you used the values (hook_v) before the attention pattern mixes them; use hook_z, the pattern-weighted values.": lambda model, cache, layer, head: cache[f"blocks.{layer}.attn.hook_v"][:, :, head] @ model.W_O[layer, head],
}


def _head_case(seed: int) -> dict:
    task = _random_task(seed)
    layer, head = (int(torch.randint(0, n, (1,), generator=task["gen"])) for n in (2, 4))
    return dict(model=task["model"], cache=task["cache"], layer=layer, head=head)


def check_head_output(learner: Callable, model: HookedTransformer, cache: ActivationCache) -> None:
    """``head_output(model, cache, layer, head)``: one head's write into the residual stream."""
    cases = [
        dict(model=model, cache=cache, layer=model.cfg.n_layers - 1, head=0),
        separating_case(_head_case, _head_reference, _HEAD_MISTAKES.values(), fresh_seed()),
    ]
    check_function(
        "01.2",
        learner,
        _head_reference,
        cases,
        mistakes=_HEAD_MISTAKES,
        hint="a head writes z[:, :, head] @ W_O[layer, head]; check the hook name and the head axis.",
        success="your head outputs match",
    )


# 01.3 ---------------------------------------------------------------------------------


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
        "01.3",
        learner,
        _dla_reference,
        cases,
        mistakes=_DLA_MISTAKES,
        hint="DLA = (head output at the last position / frozen final scale) · (W_U[:, answer] - W_U[:, wrong answer]), one number per prompt.",
        success="your direct logit attribution matches",
    )


# 01.4 ---------------------------------------------------------------------------------


def _top_grid_cases(dla_grid: Tensor, gen: torch.Generator) -> list[dict]:
    """The example, then a wide and a tall grid (never square) whose largest |DLA| is negative, each with another k."""
    cases = [dict(dla_grid=dla_grid, k=3)]
    for wide in (True, False):
        a, b = int(torch.randint(2, 5, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen))
        shape = (a, a + b) if wide else (a + b, a)
        grid = torch.randn(shape, generator=gen)
        top = grid.abs().argmax()
        grid.view(-1)[top] = -grid.view(-1)[top].abs()  # the strongest head pushes towards the wrong answer
        k = int(torch.randint(4, 6, (1,), generator=gen)) if wide else 2  # never the example's k = 3
        cases.append(dict(dla_grid=grid, k=k))
    return cases


def _unflatten(flat: Tensor, width: int) -> list[tuple[int, int]]:
    return [(int(i) // width, int(i) % width) for i in flat]


def check_top_heads(learner: Callable, dla_grid: Float[Tensor, "layer head"]) -> None:
    """``top_heads(dla_grid, k)``: the k (layer, head) pairs with the largest |DLA|, largest first."""
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = _top_grid_cases(dla_grid, gen)

    def signed(dla_grid, k):
        return _unflatten(dla_grid.flatten().topk(k).indices, dla_grid.shape[1])

    def swapped(dla_grid, k):
        return [(h, l) for l, h in residual.top_components(dla_grid, k)]

    def smallest(dla_grid, k):
        return _unflatten(dla_grid.abs().flatten().topk(k, largest=False).indices, dla_grid.shape[1])

    def rows_as_width(dla_grid, k):
        return _unflatten(dla_grid.abs().flatten().topk(k).indices, dla_grid.shape[0])

    def ascending(dla_grid, k):
        return residual.top_components(dla_grid, k)[::-1]

    check_function(
        "01.4",
        learner,
        lambda dla_grid, k: residual.top_components(dla_grid, k),
        cases,
        mistakes={
            "rank by absolute value: a head that pushes hard towards the wrong answer (negative DLA) matters as much.": signed,
            "return (layer, head) pairs: the grid's rows are layers, its columns heads.": swapped,
            "you returned the smallest |DLA| first; sort descending.": smallest,
            "you unflattened with the wrong size: in the flattened [layer, head] grid, index i is layer i // n_heads "
            "(the number of columns, dla_grid.shape[1]) and head i % n_heads.": rows_as_width,
            "you have the right heads in the wrong order: largest |DLA| first.": ascending,
        },
        hint="return a list of k (layer, head) tuples of ints, ordered by |DLA|, largest first.",
        success="you found the top heads",
    )


# 01.5 ---------------------------------------------------------------------------------


_IN_PLACE_HINT = (
    "your hook edits the residual stream it receives in place: copy it first (`resid = resid.clone()`), "
    "subtract `part` at `pos` from the copy, and return the copy."
)


def _logits_with(factory: Callable, model, tokens, part, pos, *, learner: bool = False) -> Tensor:
    hook = factory(part, pos)
    if not callable(hook):
        raise CheckFailed("01.5", f"remove_part_hook must return a hook function, got {type(hook).__name__}.")
    if learner:
        hook = guard_hook("01.5", hook, _IN_PLACE_HINT)
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def _everywhere(part, pos):
    return lambda resid, hook: resid - part[:, None]


def _added(part, pos):
    return residual.remove_part_hook(-part, pos)


def _unchanged(part, pos):
    return lambda resid, hook: None


def _at_last(part, pos):
    return residual.remove_part_hook(part, -1)


def _remove_reference(**c) -> Tensor:
    return _logits_with(residual.remove_part_hook, **c)


_REMOVE_MISTAKES = {
    "you subtracted the part at every position; subtract it only at resid[:, pos].": lambda **c: _logits_with(_everywhere, **c),
    "you added the part instead of subtracting it.": lambda **c: _logits_with(_added, **c),
    "your hook left the activation unchanged: return the edited tensor (a hook that edits a copy must return it).": lambda **c: _logits_with(_unchanged, **c),
    "you always edited the last position: subtract `part` at position `pos`, the argument.": lambda **c: _logits_with(_at_last, **c),
}


def _remove_case(seed: int) -> dict:
    task = _random_task(seed)
    gen = task["gen"]
    pos = int(torch.randint(1, task["tokens"].shape[1] - 1, (1,), generator=gen))  # neither the first nor the last
    return dict(model=task["model"], tokens=task["tokens"], part=torch.randn(4, 32, generator=gen), pos=pos)


def check_remove_part_hook(learner: Callable, model: HookedTransformer, tokens: Int[Tensor, "batch pos"], part: Float[Tensor, "batch d_model"]) -> None:
    """``remove_part_hook(part, pos)`` returns a hook that subtracts ``part`` at position ``pos``."""
    if not callable(learner):
        raise CheckFailed("01.5", f"expected a function, got {type(learner).__name__}.")
    cases = [
        dict(model=model, tokens=tokens, part=part, pos=-1),
        separating_case(_remove_case, _remove_reference, _REMOVE_MISTAKES.values(), fresh_seed()),
    ]
    check_function(
        "01.5",
        lambda **c: _logits_with(learner, **c, learner=True),
        _remove_reference,
        cases,
        mistakes=_REMOVE_MISTAKES,
        hint="the hook should return the activation with `part` subtracted at position `pos` only.",
        success="your hook edits the residual stream as asked",
    )


# 01.6 ---------------------------------------------------------------------------------


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
        "01.6",
        learner,
        _by_layer_reference,
        cases,
        mistakes=_BY_LAYER_MISTAKES,
        hint="one row per running sum (embeddings, after layer 0, ..., after the last layer), one column per prompt; the last row is the model's logit difference.",
        success="the last row is the model's own logit difference",
    )
