"""Checks of notebook 03 (activation patching).

Each check runs the learner's code on the notebook's example and on fresh inputs: a tiny random
model (``nb01.random_model``) with random clean and corrupted token pairs, random layers,
positions and directions, fresh IOI prompts, or random activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course import patching
from mi_course.checks.core import CheckFailed, call_learner, check_choice, check_function, fresh_seed, passed, separating_case
from mi_course.checks.nb01 import random_model
from mi_course.tasks import Task, make_task

__all__ = [
    "check_ablated_z",
    "check_corrupt_s2",
    "check_heads_interpretation",
    "check_patch_resid_by_hand",
    "check_s2_prediction",
    "random_pair",
    "s2_cells",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "03.1": ("mi_course.patching.patch_resid_pre", "mi_course.patching.activation_patching"),
    "03.2": ("mi_course.tasks.Task.mix",),
    "03.5": ("mi_course.patching.ablation_sweep",),
}


def random_pair(seed: int) -> dict[str, Any]:
    """A random tiny model, clean tokens, corrupted tokens (different except at position 0) and a logit-difference metric."""
    model = random_model(seed)
    gen = torch.Generator().manual_seed(seed)
    batch, pos, vocab = 4, 8, model.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch, pos), generator=gen)
    corrupted = (clean + torch.randint(1, vocab, (batch, pos), generator=gen)) % vocab
    corrupted[:, 0] = clean[:, 0]
    answers = torch.randint(0, vocab, (batch,), generator=gen)
    wrong = (answers + torch.randint(1, vocab, (batch,), generator=gen)) % vocab
    rows = torch.arange(batch)

    def metric(logits: Tensor) -> Tensor:
        return (logits[rows, -1, answers] - logits[rows, -1, wrong]).mean()

    return dict(model=model, clean_tokens=clean, corrupted_tokens=corrupted, metric=metric, gen=gen)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


# 03.1 ---------------------------------------------------------------------------------


def _restore(source_activation: Tensor, pos: int) -> Callable:
    def hook(activation: Tensor, hook=None) -> Tensor:
        activation = activation.clone()
        activation[:, pos] = source_activation[:, pos]
        return activation

    return hook


def _by_hand(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising", *, swap=False, same=False, name="resid_pre", every=False) -> float:
    hook_name = f"blocks.{layer}.hook_{name}"
    base, source = (corrupted_tokens, clean_tokens) if (direction == "denoising") != swap else (clean_tokens, corrupted_tokens)
    if same:
        source = base
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=hook_name)
        hook = (lambda act, hook: cache[hook_name]) if every else _restore(cache[hook_name], pos)
        return float(metric(model.run_with_hooks(base, fwd_hooks=[(hook_name, hook)])))


def _package(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction="denoising") -> float:
    grid = patching.patch_resid_pre(model, clean_tokens, corrupted_tokens, metric, direction=direction, progress=False, positions=[pos])
    return float(grid[layer, pos])


def every_position(**c):
    return _by_hand(**c, every=True)


def source_is_base(**c):
    return _by_hand(**c, same=True)


def directions_swapped(**c):
    return _by_hand(**c, swap=True)


def resid_post(**c):
    return _by_hand(**c, name="resid_post")


_BY_HAND_MISTAKES = {
    "your result is the metric of the run you took the activation from: you patched every position, not just `pos` "
    "(write only activation[:, pos]).": every_position,
    "nothing changed: your result is the unpatched run's metric. Take the activation from the *other* prompts (clean ones when "
    "denoising, corrupted ones when noising), and make sure the hook returns the edited activation.": source_is_base,
    "your directions are swapped: denoising runs the corrupted prompts and restores a clean activation; noising runs the clean "
    "prompts and inserts a corrupted one.": directions_swapped,
    "you patched blocks.{layer}.hook_resid_post; the heatmap patches hook_resid_pre, the stream that block `layer` reads.": resid_post,
}


def _by_hand_case(seed: int, layer: int, direction: str) -> dict:
    task = random_pair(seed)
    gen = task.pop("gen")
    return dict(task, layer=layer, pos=_randint(gen, 1, 7), direction=direction)


def check_patch_resid_by_hand(learner: Callable, model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], metric: Callable, layer: int, pos: int) -> None:
    """``patch_resid_by_hand(model, clean_tokens, corrupted_tokens, metric, layer, pos, direction)``: one patch, either direction."""
    example = dict(model=model, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, metric=metric, layer=layer, pos=pos)
    cases = [dict(example, direction="denoising"), dict(example, direction="noising")]
    seed = fresh_seed()
    for fresh_layer, direction in ((0, "denoising"), (0, "noising"), (1, "noising")):  # both layers and directions, a random position each
        # (in the last layer, patching hook_resid_post away from the last position changes nothing, like taking the activation from
        # the base run: those two mistakes may agree there; the layer-0 cases tell them apart)
        draw = lambda s, fresh_layer=fresh_layer, direction=direction: _by_hand_case(s, fresh_layer, direction)  # noqa: E731
        cases.append(separating_case(draw, _by_hand, _BY_HAND_MISTAKES.values(), seed + fresh_layer, pairwise=fresh_layer == 0))
    check_function(
        "03.1",
        learner,
        _package,
        cases,
        mistakes=_BY_HAND_MISTAKES,
        hint="cache blocks.{layer}.hook_resid_pre on the source prompts (clean when denoising, corrupted when noising), run the other "
        "prompts with a hook that returns a copy with position `pos` overwritten by the cached values, and return metric(logits) as a float.",
        success="your patches match the package's sweeps in both directions",
    )


# 03.2 ---------------------------------------------------------------------------------


def _names(task: Task) -> set[int]:
    """The name tokens of an IOI task: every token at a name slot, clean or corrupted."""
    rows = torch.arange(task.n)
    return {int(t) for role in ("IO", "S1", "S2") for tokens in (task.clean_tokens, task.corrupted_tokens) for t in tokens[rows, task.positions[role]]}


def _copy(task: Task) -> Task:
    return replace(task, clean_tokens=task.clean_tokens.clone(), corrupted_tokens=task.corrupted_tokens.clone(), positions={k: v.clone() for k, v in task.positions.items()})


def _s2_problem(task: Task, got: Any) -> str | None:
    """What is wrong with `got` as a corruption of `task`'s clean prompts at S2 only, or None."""
    clean = task.clean_tokens
    if not isinstance(got, Tensor):
        return f"return the corrupted tokens as a tensor of shape {tuple(clean.shape)}, not {type(got).__name__}."
    if got.shape != clean.shape:
        return f"your tokens have shape {tuple(got.shape)}; a patching pair needs the clean prompts' shape {tuple(clean.shape)} (same prompts, same length)."
    if got.dtype not in (torch.int64, torch.int32):
        return f"return token ids (integers), not {got.dtype}."
    rows = torch.arange(task.n)
    differ = got != clean
    s2 = torch.zeros_like(differ)
    s2[rows, task.positions["S2"]] = True
    for role in ("IO", "S1"):
        if differ[rows, task.positions[role]].any():
            what = "the indirect object (IO), the answer itself" if role == "IO" else "the first mention of the subject (S1)"
            return f"your tokens differ from the clean prompts at {what}; change only the second mention of the subject (S2)."
    if (differ & ~s2).any():
        return "your tokens differ from the clean prompts away from S2 (a word of the template): change only the S2 name."
    unchanged = int((~differ[rows, task.positions["S2"]]).sum())
    if unchanged:
        return f"S2 is unchanged on {unchanged} of {task.n} prompts: every prompt needs another name there."
    new = got[rows, task.positions["S2"]]
    if not set(new.tolist()) <= _names(task):
        return "the new token at S2 is not a name: put another name there, so that the model stays on the kind of input it knows."
    return None


def check_corrupt_s2(learner: Callable, model: HookedTransformer, task: Task) -> None:
    """``corrupt_s2(task)``: the clean prompts with only the S2 name changed, run on the notebook's prompts and fresh ones."""
    if not callable(learner):
        raise CheckFailed("03.2", f"expected a function, got {type(learner).__name__}.")
    fresh = make_task("ioi", model, n=8, seed=fresh_seed())
    responds = abs(task.clean_value - task.corrupted_value) > 1.0  # a model that does IOI (not a random stand-in)
    for each in (task, fresh):
        given = _copy(each)
        got = call_learner("03.2", learner, given)
        if not torch.equal(given.clean_tokens, each.clean_tokens):
            raise CheckFailed("03.2", "your function changed task.clean_tokens in place: clone the clean tokens and change the copy.")
        problem = _s2_problem(each, got)
        if problem:
            raise CheckFailed("03.2", problem)
        if responds:
            with torch.no_grad():
                kept = float(each.normalised_metric(model(got)))
            if kept > 0.5:
                raise CheckFailed("03.2", f"the model still does {kept:.0%} of the task on your prompts: the S2 name must be one that "
                                  "breaks the repetition (a name that is not the subject).")
    if not responds:
        print(f"this model does not do IOI (clean and corrupted metric differ by {abs(task.clean_value - task.corrupted_value):.2f}): "
              "the metric's response was not checked")
    passed("03.2", "only S2 changes, to another name, on every prompt" + (", and the behaviour goes" if responds else ""))


# 03.3 ---------------------------------------------------------------------------------


def s2_cells(model: HookedTransformer, task: Task, threshold: float) -> tuple[set[tuple[int, int]], Tensor | None]:
    """The (layer, position) cells whose denoising restores at least `threshold` of the S2-only corruption, and the grid.

    Only positions from S2 on are patched (nothing before S2 can know it); the grid is None on a model without the behaviour.
    """
    only_s2 = task.with_corrupted(model, task.mix("S2"))
    if not abs(only_s2.clean_value - only_s2.corrupted_value) > 0.1:
        return set(), None
    first = int(task.positions["S2"].min())
    grid = patching.patch_resid_pre(model, only_s2.clean_tokens, only_s2.corrupted_tokens, only_s2.normalised_metric,
                                    positions=list(range(first, task.clean_tokens.shape[1])), progress=False)  # fmt: skip
    return {(int(l), int(p)) for l, p in (grid >= threshold).nonzero().tolist()}, grid


def check_s2_prediction(prediction: Any, model: HookedTransformer, task: Task, threshold: float) -> None:
    """The predicted set of (layer, position) cells that restore at least `threshold` with the S2-only corruption, graded against the run."""
    if prediction is None or prediction is Ellipsis:
        raise CheckFailed("03.3", "no prediction yet: set prediction to a set of (layer, position) pairs in the cell above.")
    try:
        predicted = {(int(l), int(p)) for l, p in prediction}
    except (TypeError, ValueError):
        raise CheckFailed("03.3", "give a set of (layer, position) pairs, e.g. {(0, 3), (2, 5)}.") from None
    actual, grid = s2_cells(model, task, threshold)
    if grid is None:
        print("this model does not do IOI (the S2-only corruption leaves the metric where it was): the prediction is not graded here")
        return
    if predicted == actual:
        passed("03.3", f"your {len(actual)} cells are the ones the run finds")
        return
    s2 = task.positions["S2"]
    hints = []
    if any(p < int(s2.min()) for _, p in predicted):
        hints.append("positions before S2 cannot know which name is there (attention looks only backwards), so restoring them does nothing.")
    if any(l == 0 and p not in s2.tolist() for l, p in predicted):
        hints.append("at layer 0 the residual stream is the token embedding: only the position whose token differs can matter there.")
    if (0, int(s2[0])) not in predicted:
        hints.append("at layer 0, restoring S2's embedding turns the corrupted prompt back into the clean one.")
    right = len(predicted & actual)
    raise CheckFailed("03.3", f"{right} of your {len(predicted)} cells are among the {len(actual)} that the run finds. "
                      + (" ".join(hints) or "Look again at where the ABC heatmap found the information at each depth."))


# 03.4 ---------------------------------------------------------------------------------

HEAD_OPTIONS = {
    "A": "On clean and ABC prompts the key heads attend to different places; where they look carries the information.",
    "B": "The key heads attend to the same places on both; what they move (their values) carries the information.",
    "C": "The key heads' queries carry the information: on clean prompts they ask a different question.",
    "D": "The key heads do not matter; the information reaches the end through the MLPs only.",
}

_HEADS_SEALED = (
    "b8d55d0ee73b78f1",
    "70755415a0c8bbb9baddafaa74df420c",
    "XaYz6isFzfdvFdmvJPFLL0loh3JV7ufzVwJxvwRgge5NvP3fd++lsyvQLEA18TOidJleHu74q07LIX14cfwergwAGD+DA+PmzYETSUIsBThOeHmEUFEmwCGZ4IanvuQtfjWlEFM+Y+wgUvl89Wd+BjccTFyb6WB3my6unF//WKZAOIXrMVz3p6iA7Au/pRtLMWWI3ShOlOgugXTc1tBm/zIArLTjqVsLzBoxW9UidTn/QbIo3DNGJ70lVihMHMqo7vagbu2AAenfWFey2rsumgzeYuZvEybqVnuv8VKjY79la0tMZ5zCXHp0ATzDAr3nByl3TpgZLZ2XP5FbCEP1XUiDRPaLx/eOUXhj9jSiSKH5NUemuUZWIjdq7pA8BWJPXZOZYQ==",
)


def check_heads_interpretation(answer: Any) -> None:
    """One letter of ``HEAD_OPTIONS``: what the q/k/v/pattern patches of the key heads say."""
    check_choice(
        "03.4",
        answer,
        HEAD_OPTIONS,
        _HEADS_SEALED,
        hints={
            "A": "patching the key heads' clean patterns into the corrupted run restores nothing: if where they look carried the "
            "information, it would restore what patching their output does.",
            "C": "the queries decide where a head looks; look at what patching the queries restored.",
            "D": "patching the key heads' outputs restores a large share, and noising them costs more: they matter.",
        },
    )


# 03.5 ---------------------------------------------------------------------------------


def _ablated(z, head, mode, index=None, *, over=(0,), heads="one", zero=False):
    out = z.clone()
    cols = slice(None) if heads == "all" else head
    if mode == "zero" or (zero and mode == "mean"):
        out[:, :, cols] = 0.0
    elif mode == "mean":
        out[:, :, cols] = z[:, :, cols].mean(dim=over, keepdim=True)
    else:
        out[:, :, cols] = z[index][:, :, cols]
    return out


def zero_for_mean(**c):
    return _ablated(**c, zero=True)


def mean_over_positions(**c):
    return _ablated(**c, over=(1,))


def mean_over_prompts_and_positions(**c):
    return _ablated(**c, over=(0, 1))


def every_head(**c):
    return _ablated(**c, heads="all")


def resample_unchanged(z, head, mode, index):
    return z if mode == "resample" else _ablated(z, head, mode, index)


def zero_unchanged(z, head, mode, index):
    return z if mode == "zero" else _ablated(z, head, mode, index)


def check_ablated_z(learner: Callable, z: Float[Tensor, "batch pos head d_head"], head: int) -> None:
    """``ablated_z(z, head, mode, index)``: zero, mean or resample ablation of one head's ``hook_z``."""
    if not callable(learner):
        raise CheckFailed("03.5", f"expected a function, got {type(learner).__name__}.")
    gen = torch.Generator().manual_seed(fresh_seed())
    batch, n_heads = _randint(gen, 4, 9), _randint(gen, 2, 6)
    fresh = torch.randn(batch, _randint(gen, 3, 8), n_heads, 4, generator=gen)
    fresh_head = _randint(gen, 0, n_heads)
    fresh_index = patching.resample_index(batch, seed=_randint(gen, 0, 1000))
    cases = [
        dict(z=z, head=head, mode="zero", index=None),
        dict(z=z, head=head, mode="mean", index=None),
        dict(z=z, head=head, mode="resample", index=patching.resample_index(z.shape[0], seed=0)),
        dict(z=fresh, head=fresh_head, mode="zero", index=None),
        dict(z=fresh, head=fresh_head, mode="mean", index=None),
        dict(z=fresh, head=fresh_head, mode="resample", index=fresh_index),
    ]
    check_function(
        "03.5",
        learner,
        _ablated,
        cases,
        mistakes={
            "zero instead of mean: mean ablation replaces the head's output by its average over prompts, not by 0.": zero_for_mean,
            "you averaged over positions; average over the prompts (dim 0), so that each position keeps its own mean.": mean_over_positions,
            "you averaged over prompts and positions together; average over the prompts only (dim 0), position by position.":
                mean_over_prompts_and_positions,
            "you ablated every head of the layer; change only z[:, :, head].": every_head,
            "your resample ablation left the head unchanged: prompt b takes head `head`'s activation from prompt index[b], z[index, :, head].":
                resample_unchanged,
            "your zero ablation left the head unchanged: mode 'zero' sets z[:, :, head] to 0.": zero_unchanged,
        },
        hint="zero: z[:, :, head] becomes 0; mean: its mean over dim 0 (keepdim); resample: z[index, :, head]; other heads unchanged.",
        unchanged=("z",),
        unchanged_hint="your function changed `z` in place: the exercise asks for a copy. Start with `out = z.clone()`, "
        "ablate head `head` in `out` (reading the values from `z`) and return it.",
        success="your zero, mean and resample ablations match",
    )
