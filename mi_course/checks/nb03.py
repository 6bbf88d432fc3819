"""Checks of notebook 03 (activation patching).

Each check runs the learner's code on the notebook's example and on fresh random inputs: a
tiny random model (``nb01.random_model``) with random clean and corrupted token pairs, random
layers and positions, or random grids and activations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course import patching
from mi_course.checks.core import CheckFailed, check_function, fresh_seed, guard_hook, separating_case
from mi_course.checks.nb01 import random_model

__all__ = [
    "check_ablated_z",
    "check_important_cells",
    "check_normalise",
    "check_patch_resid_by_hand",
    "check_restore_hook",
    "random_pair",
]

# The course's own implementation of each exercise: exercise code that calls one is flagged in the
# gradebook for the instructor to review (the grader reads this literal without importing the module).
REFERENCES: dict[str, tuple[str, ...]] = {
    "03.3": ("mi_course.patching.patch_resid_pre", "mi_course.patching.activation_patching"),
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


def _normalise(value, clean_value, corrupted_value):
    return (value - corrupted_value) / (clean_value - corrupted_value)


def check_normalise(learner: Callable, value: Tensor | float, clean_value: float, corrupted_value: float) -> None:
    """``normalise(value, clean_value, corrupted_value)``: 1 at the clean value, 0 at the corrupted one."""
    gen = torch.Generator().manual_seed(fresh_seed())
    clean, corrupted = 1 + 5 * torch.rand(1, generator=gen).item(), -2 * torch.rand(1, generator=gen).item()
    values = torch.randn(16, generator=gen) * 3
    values[:2] = torch.tensor([corrupted - 1.0, clean + 1.0])  # beyond both ends: normalised below 0 and above 1
    cases = [
        dict(value=value, clean_value=clean_value, corrupted_value=corrupted_value),
        dict(value=values, clean_value=clean, corrupted_value=corrupted),
        # a metric where lower is better (a loss): the clean value is below the corrupted one
        dict(value=2 + torch.rand(1, generator=gen).item(), clean_value=1.5 + torch.rand(1, generator=gen).item(), corrupted_value=4.0 + torch.rand(1, generator=gen).item()),
    ]
    check_function(
        "03.1",
        learner,
        _normalise,
        cases,
        mistakes={
            "your normalisation has clean and corrupted swapped: the clean value must map to 1 and the corrupted value to 0.": lambda value, clean_value, corrupted_value: _normalise(value, corrupted_value, clean_value),
            "you divided by the clean value alone: subtract the corrupted value (the baseline) from the value and from the clean value first.": lambda value, clean_value, corrupted_value: value / clean_value,
            "the numerator is right but the denominator should be the gap clean_value - corrupted_value, not clean_value.": lambda value, clean_value, corrupted_value: (value - corrupted_value) / clean_value,
        },
        hint="compute (value - corrupted_value) / (clean_value - corrupted_value).",
        success="clean maps to 1, corrupted to 0",
    )


# 03.2 ---------------------------------------------------------------------------------


def _restore(clean_activation: Tensor, pos: int) -> Callable:
    def hook(activation: Tensor, hook=None) -> Tensor:
        activation = activation.clone()
        activation[:, pos] = clean_activation[:, pos]
        return activation

    return hook


_IN_PLACE_HINT = (
    "your hook overwrites the activation it receives in place: the exercise asks you to edit a copy. "
    "Start with `activation = activation.clone()`, write the clean values into the copy and return it."
)


def _run_with(factory: Callable, model, clean_tokens, corrupted_tokens, layer, pos, *, learner: bool = False) -> Tensor:
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens, names_filter=name)
        hook = factory(cache[name], pos)
        if not callable(hook):
            raise CheckFailed("03.2", f"restore_hook must return a hook function, got {type(hook).__name__}.")
        if learner:
            hook = guard_hook("03.2", hook, _IN_PLACE_HINT)
        return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])


def _every_position(clean_activation, pos):
    return lambda activation, hook: clean_activation


def _added(clean_activation, pos):
    def hook(activation, hook):
        activation = activation.clone()
        activation[:, pos] += clean_activation[:, pos]
        return activation

    return hook


def _batch_axis(clean_activation, pos):
    def hook(activation, hook):
        activation = activation.clone()
        activation[pos] = clean_activation[pos]
        return activation

    return hook


def _unchanged(clean_activation, pos):
    return lambda activation, hook: None


def _restore_reference(**c) -> Tensor:
    return _run_with(_restore, **c)


_RESTORE_MISTAKES = {
    "you patched every position, not just `pos`: replace only activation[:, pos].": lambda **c: _run_with(_every_position, **c),
    "you added the clean activation to the corrupted one; replace (overwrite) it instead.": lambda **c: _run_with(_added, **c),
    "you indexed the batch axis: positions are axis 1, so write activation[:, pos], for every prompt.": lambda **c: _run_with(_batch_axis, **c),
    "your hook left the activation unchanged: return the edited tensor (a hook that edits a copy must return it).": lambda **c: _run_with(_unchanged, **c),
}


def _restore_case(seed: int) -> dict:
    task = random_pair(seed)
    gen = task.pop("gen")
    task.pop("metric")
    return dict(task, layer=_randint(gen, 0, 2), pos=_randint(gen, 1, 7))


def check_restore_hook(learner: Callable, model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], layer: int, pos: int) -> None:
    """``restore_hook(clean_activation, pos)``: a hook that writes the clean activation at position ``pos`` only."""
    if not callable(learner):
        raise CheckFailed("03.2", f"expected a function, got {type(learner).__name__}.")
    cases = [
        dict(model=model, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, layer=layer, pos=pos),
        separating_case(_restore_case, _restore_reference, _RESTORE_MISTAKES.values(), fresh_seed()),
    ]
    check_function(
        "03.2",
        lambda **c: _run_with(learner, **c, learner=True),
        _restore_reference,
        cases,
        mistakes=_RESTORE_MISTAKES,
        hint="the hook should return the activation with position `pos` (all prompts) replaced by clean_activation[:, pos].",
        success="your hook restores one clean position",
    )


# 03.3 ---------------------------------------------------------------------------------


def _by_hand(model, clean_tokens, corrupted_tokens, metric, layer, pos, *, base="corrupted", source="clean", name="resid_pre", every=False) -> float:
    hook_name = f"blocks.{layer}.hook_{name}"
    tokens = {"clean": clean_tokens, "corrupted": corrupted_tokens}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[source], names_filter=hook_name)
        hook = (lambda act, hook: cache[hook_name]) if every else _restore(cache[hook_name], pos)
        return float(metric(model.run_with_hooks(tokens[base], fwd_hooks=[(hook_name, hook)])))


def _package(model, clean_tokens, corrupted_tokens, metric, layer, pos) -> float:
    return float(patching.patch_resid_pre(model, clean_tokens, corrupted_tokens, metric, progress=False)[layer, pos])


def _clean_run(model, clean_tokens, corrupted_tokens, metric, layer, pos):
    with torch.no_grad():
        return float(metric(model(clean_tokens)))


_BY_HAND_MISTAKES = {
    "your result is the clean run's metric: either you ran the clean input and patched clean activations (run the *corrupted* prompts), "
    "or you patched every position, not just `pos`.": _clean_run,
    "nothing changed: your result is the corrupted run's metric. Cache the *clean* run, and make sure the hook returns the edited activation.":
        lambda **c: _by_hand(**c, source="corrupted"),
    "that is noising: you ran the clean prompts and inserted a corrupted activation. Denoising runs the corrupted prompts and restores a clean one.":
        lambda **c: _by_hand(**c, base="clean", source="corrupted"),
    "you patched blocks.{layer}.hook_resid_post; the heatmap patches hook_resid_pre, the stream that block `layer` reads.":
        lambda **c: _by_hand(**c, name="resid_post"),
}


def _by_hand_case(seed: int, layer: int) -> dict:
    task = random_pair(seed)
    gen = task.pop("gen")
    return dict(task, layer=layer, pos=_randint(gen, 1, 7))


def check_patch_resid_by_hand(learner: Callable, model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], metric: Callable, layer: int, pos: int) -> None:
    """``patch_resid_by_hand(model, clean_tokens, corrupted_tokens, metric, layer, pos)``: one denoising patch."""
    cases = [dict(model=model, clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, metric=metric, layer=layer, pos=pos)]
    for fresh_layer in (0, 1):  # both layers, a random position each: a fixed layer or position does not pass
        # (in the last layer, patching hook_resid_post away from the last position changes nothing, like caching the
        # corrupted run: those two mistakes may agree there; the layer-0 case tells them apart)
        draw = lambda s, fresh_layer=fresh_layer: _by_hand_case(s, fresh_layer)  # noqa: E731
        cases.append(separating_case(draw, _by_hand, _BY_HAND_MISTAKES.values(), fresh_seed(), pairwise=fresh_layer == 0))
    check_function(
        "03.3",
        learner,
        _package,
        cases,
        mistakes=_BY_HAND_MISTAKES,
        hint="cache the clean run, run the corrupted prompts with a hook on blocks.{layer}.hook_resid_pre that restores position `pos`, and return metric(logits) as a float.",
        success="your patch matches the package's sweep",
    )


# 03.4 ---------------------------------------------------------------------------------


def _cells(results: Tensor, threshold: float) -> list[tuple[int, int]]:
    return [(int(l), int(p)) for l, p in (results >= threshold).nonzero().tolist()]


def _as_cells(found: Any) -> Any:
    """The learner's cells as a sorted list of (int, int), or the raw answer if it is not a collection of pairs."""
    try:
        return sorted(tuple(int(x) for x in cell) for cell in found)
    except (TypeError, ValueError):
        return found


def _cells_grid(gen: torch.Generator, rows: int, cols: int, threshold: float) -> Tensor:
    """A random grid with several cells per layer at or above `threshold`, one cell exactly on it, and
    a strongly negative cell (|value| above the threshold)."""
    grid = torch.randn(rows, cols, generator=gen) * 0.5
    grid = grid.where(grid < threshold, grid - 2 * threshold)  # no accidental hits
    for layer in range(rows):
        for pos in torch.randperm(cols, generator=gen)[: _randint(gen, 2, min(4, cols) + 1)].tolist():
            grid[layer, pos] = threshold + 0.05 + 0.5 * float(torch.rand(1, generator=gen))
    cells = torch.randperm(rows * cols, generator=gen)[:2].tolist()
    grid.view(-1)[cells[0]] = threshold  # exactly on the threshold: counts
    grid.view(-1)[cells[1]] = -(threshold + 0.3)  # a large negative effect: does not count
    return grid


def check_important_cells(learner: Callable, results: Float[Tensor, "layer pos"], threshold: float) -> None:
    """``important_cells(results, threshold)``: the (layer, position) cells whose patch restores at least ``threshold``."""
    if not callable(learner):
        raise CheckFailed("03.4", f"expected a function, got {type(learner).__name__}.")
    gen = torch.Generator().manual_seed(fresh_seed())
    cases = [dict(results=results, threshold=threshold)]
    for wide in (True, False):
        rows, extra = _randint(gen, 3, 6), _randint(gen, 2, 6)
        fresh_threshold = _randint(gen, 4, 8) / 16  # exact in float32, so a cell can sit exactly on it
        shape = (rows, rows + extra) if wide else (rows + extra, rows)
        cases.append(dict(results=_cells_grid(gen, *shape, fresh_threshold), threshold=fresh_threshold))

    def absolute(results, threshold):
        return _cells(results.abs(), threshold)

    def swapped(results, threshold):
        return [(p, l) for l, p in _cells(results, threshold)]

    def without_bos(results, threshold):
        return [(l, p - 1) for l, p in _cells(results, threshold)]

    def strict(results, threshold):
        return [(int(l), int(p)) for l, p in (results > threshold).nonzero().tolist()]

    def one_per_layer(results, threshold):
        best = results.max(dim=1)
        return [(l, int(p)) for l, (v, p) in enumerate(zip(best.values, best.indices)) if v >= threshold]

    check_function(
        "03.4",
        lambda **c: _as_cells(learner(**c)),
        lambda **c: sorted(_cells(**c)),
        cases,
        mistakes={
            "you kept cells with a large *negative* effect: a negative value means restoring that activation moves the metric away "
            "from the clean value. Keep results >= threshold.": lambda **c: sorted(absolute(**c)),
            "return (layer, position) pairs: the heatmap's rows are layers and its columns positions.": lambda **c: sorted(swapped(**c)),
            "your positions are off by one: position 0 is the <bos> token, and the columns count it.": lambda **c: sorted(without_bos(**c)),
            "a cell exactly at the threshold counts too: keep results >= threshold, not > threshold.": lambda **c: sorted(strict(**c)),
            "you kept one cell per layer (its maximum): keep every cell of a layer that reaches the threshold.": lambda **c: sorted(one_per_layer(**c)),
        },
        hint="return every (layer, position) with results[layer, position] >= threshold, as a list of pairs of ints.",
        success="you found the cells that matter",
    )


# 03.5 ---------------------------------------------------------------------------------


def _ablated(z, head, mode, index=None, *, over=(0,), heads="one", zero=False):
    out = z.clone()
    cols = slice(None) if heads == "all" else head
    if zero and mode == "mean":
        out[:, :, cols] = 0.0
    elif mode == "mean":
        out[:, :, cols] = z[:, :, cols].mean(dim=over, keepdim=True)
    else:
        out[:, :, cols] = z[index][:, :, cols]
    return out


def check_ablated_z(learner: Callable, z: Float[Tensor, "batch pos head d_head"], head: int) -> None:
    """``ablated_z(z, head, mode, index)``: mean or resample ablation of one head's ``hook_z``."""
    if not callable(learner):
        raise CheckFailed("03.5", f"expected a function, got {type(learner).__name__}.")
    gen = torch.Generator().manual_seed(fresh_seed())
    batch, n_heads = _randint(gen, 4, 9), _randint(gen, 2, 6)
    fresh = torch.randn(batch, _randint(gen, 3, 8), n_heads, 4, generator=gen)
    fresh_head = _randint(gen, 0, n_heads)
    fresh_index = patching.resample_index(batch, seed=_randint(gen, 0, 1000))
    cases = [
        dict(z=z, head=head, mode="mean", index=None),
        dict(z=z, head=head, mode="resample", index=patching.resample_index(z.shape[0], seed=0)),
        dict(z=fresh, head=fresh_head, mode="mean", index=None),
        dict(z=fresh, head=fresh_head, mode="resample", index=fresh_index),
    ]
    check_function(
        "03.5",
        learner,
        _ablated,
        cases,
        mistakes={
            "zero instead of mean: mean ablation replaces the head's output by its average over prompts, not by 0.":
                lambda **c: _ablated(**c, zero=True),
            "you averaged over positions; average over the prompts (dim 0), so that each position keeps its own mean.":
                lambda **c: _ablated(**c, over=(1,)),
            "you averaged over prompts and positions together; average over the prompts only (dim 0), position by position.":
                lambda **c: _ablated(**c, over=(0, 1)),
            "you ablated every head of the layer; change only z[:, :, head].": lambda **c: _ablated(**c, heads="all"),
            "your resample ablation left the head unchanged: prompt b takes head `head`'s activation from prompt index[b], z[index, :, head].":
                lambda z, head, mode, index: z if mode == "resample" else _ablated(z, head, mode, index),
        },
        hint="mean: z[:, :, head] becomes its mean over dim 0 (keepdim); resample: z[:, :, head] becomes z[index, :, head]; other heads unchanged.",
        unchanged=("z",),
        unchanged_hint="your function changed `z` in place: the exercise asks for a copy. Start with `out = z.clone()`, "
        "ablate head `head` in `out` (reading the values from `z`) and return it.",
        success="your mean and resample ablations match",
    )
