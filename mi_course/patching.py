"""Interventions on a model's activations: ablating attention heads and measuring the effect.

Activations of TransformerLens's per-head hook points (``hook_z``, ``hook_result``,
``hook_q``/``hook_k``/``hook_v``) are laid out ``[batch, pos, head_index, ...]``.

Activation patching sweeps (`activation_patching` and its named shortcuts ``patch_*``;
`ablation_sweep` for zero, mean and resample ablation) patch one component at a time, like
``transformer_lens.patching``, but put many patches into one forward pass: the batch is
repeated once per patch, copy i patches component i, and the run starts at the patched layer
from the cached residual stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

__all__ = [
    "ABLATION_MODES",
    "ACTIVATIONS",
    "DIRECTIONS",
    "SWEEP_ABLATIONS",
    "Metric",
    "ablate_head_hook",
    "ablation_sweep",
    "activation_patching",
    "check_tokens",
    "hook_name",
    "metric_value",
    "normalised_effect",
    "patch_attn_out",
    "patch_head_k",
    "patch_head_k_by_pos",
    "patch_head_out",
    "patch_head_out_by_pos",
    "patch_head_pattern",
    "patch_head_pattern_by_dest",
    "patch_head_q",
    "patch_head_q_by_pos",
    "patch_head_v",
    "patch_head_v_by_pos",
    "patch_mlp_out",
    "patch_resid_mid",
    "patch_resid_pre",
    "resample_index",
]

ABLATION_MODES = ("mean", "zero")


def ablate_head_hook(head: int, mode: str = "mean") -> Callable[..., torch.Tensor]:
    """A hook function that ablates one head of a ``[batch, pos, head_index, ...]`` activation.

    ``mode="mean"`` replaces the head's activation at each position by its mean over the
    batch (the batch is the reference distribution); ``mode="zero"`` sets it to zero.
    Other heads are left untouched; the hook returns a new tensor.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, not {mode!r}")

    def hook_fn(activation: torch.Tensor, hook=None) -> torch.Tensor:
        out = activation.clone()
        if mode == "zero":
            out[:, :, head] = 0.0
        else:
            out[:, :, head] = activation[:, :, head].mean(dim=0, keepdim=True)
        return out

    return hook_fn


def normalised_effect(clean: float, intervened: float, baseline: float) -> float:
    """How far an intervention moves a metric from its clean value towards a baseline.

    0 means no effect, 1 means the metric fell all the way to the baseline (for example the
    value on inputs where the behaviour is impossible). Works for metrics where higher is
    better (logit difference) and lower is better (loss) alike.
    """
    return float((clean - intervened) / (clean - baseline))


# ---------------------------------------------------------------------------------------------
# Activation patching sweeps: many patches, batched into few forward passes.
# ---------------------------------------------------------------------------------------------

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]

# activation -> (hook name template, the dimension of each patchable axis; dimension 0 is the batch)
ACTIVATIONS: dict[str, tuple[str, dict[str, int]]] = {
    "resid_pre": ("blocks.{}.hook_resid_pre", {"pos": 1}),
    "resid_mid": ("blocks.{}.hook_resid_mid", {"pos": 1}),
    "resid_post": ("blocks.{}.hook_resid_post", {"pos": 1}),
    "attn_out": ("blocks.{}.hook_attn_out", {"pos": 1}),
    "mlp_out": ("blocks.{}.hook_mlp_out", {"pos": 1}),
    "z": ("blocks.{}.attn.hook_z", {"pos": 1, "head": 2}),
    "q": ("blocks.{}.attn.hook_q", {"pos": 1, "head": 2}),
    "k": ("blocks.{}.attn.hook_k", {"pos": 1, "head": 2}),
    "v": ("blocks.{}.attn.hook_v", {"pos": 1, "head": 2}),
    "pattern": ("blocks.{}.attn.hook_pattern", {"head": 1, "dest_pos": 2, "src_pos": 3}),
}
DIRECTIONS = ("denoising", "noising")
SWEEP_ABLATIONS = ("zero", "mean", "resample")


def hook_name(model: HookedTransformer, activation: str, layer: int) -> str:
    """The TransformerLens hook name of `activation` in `layer`, checked against the model."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    name = ACTIVATIONS[activation][0].format(layer)
    if name not in model.hook_dict or (model.cfg.attn_only and activation == "mlp_out"):  # attn-only blocks never call it
        hint = " (the model is attention-only: it has no MLPs)" if model.cfg.attn_only and "mlp" in activation else ""
        raise ValueError(f"the model has no hook {name!r}{hint}; the activations it has are listed in model.hook_dict.")
    return name


def check_tokens(clean_tokens: Tensor, corrupted_tokens: Tensor) -> None:
    """Raise a clear error unless both are integer token tensors of the same [batch, pos] shape."""
    for label, tokens in (("clean", clean_tokens), ("corrupted", corrupted_tokens)):
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(f"{label} tokens must be an integer tensor of shape (batch, pos), got {getattr(tokens, 'shape', tokens)!r}.")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape, got {tuple(clean_tokens.shape)} and "
            f"{tuple(corrupted_tokens.shape)}; pair every clean prompt with a corrupted prompt of the same length."
        )


def metric_value(metric: Metric, logits: Tensor) -> Tensor:
    """``metric(logits)`` as a 0-d tensor, or a clear error if the metric does not return one number."""
    value = metric(logits)
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=logits.dtype)
    if value.numel() != 1:
        raise ValueError(
            f"metric must return a scalar (e.g. the mean logit difference over the batch), got shape {tuple(value.shape)}; "
            "average over the batch inside the metric."
        )
    return value.reshape(())


def _check_by(activation: str, by: Sequence[str]) -> tuple[str, ...]:
    by = tuple(by)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    axes = ACTIVATIONS[activation][1]
    if not by or by[0] != "layer" or len(set(by)) != len(by) or not set(by[1:]) <= set(axes):
        raise ValueError(f"by must be ('layer', ...) followed by distinct axes of {activation!r} out of {tuple(axes)}, got {by!r}.")
    return by


def _patch_mask(
    indices: Int[Tensor, "copy axis"], dims: Sequence[int], shape: Sequence[int]
) -> Bool[Tensor, "copy 1 ..."]:
    """Copy i patches the entries whose coordinate along dims[j] is indices[i, j] (all others: every entry).

    `shape` is the activation's shape without the batch; the mask broadcasts against
    an activation viewed as [copy, batch, *shape].
    """
    mask = torch.ones(len(indices), 1, *[1] * len(shape), dtype=torch.bool)
    for j, dim in enumerate(dims):
        one_hot = torch.nn.functional.one_hot(indices[:, j], shape[dim - 1]).bool()
        view = [len(indices), 1] + [1] * len(shape)
        view[dim + 1] = shape[dim - 1]
        mask = mask & one_hot.reshape(view)
    return mask


def _sweep(
    model: HookedTransformer,
    base_tokens: Int[Tensor, "batch pos"],
    sources: list[Tensor],
    metric: Metric,
    activation: str,
    by: tuple[str, ...],
    patches_per_pass: int | None,
    progress: bool,
    positions: Sequence[int] | None = None,
) -> Tensor:
    """The metric of the run on `base_tokens` with, in turn, each index of `by` set to `sources[layer]`.

    Patches share forward passes: the base run's residual stream before the patched layer is
    repeated once per patch and the run starts there, copy i patching index i. A patch at
    position p cannot change earlier positions (attention is causal), so the run also starts at
    the first patched position, reading the base run's keys and values of the earlier ones.
    Patches that insert the values already there (e.g. positions before the first token where
    clean and corrupted prompts differ) score the base run's metric without a forward pass, and
    so do patches at positions outside `positions` (when given).
    """
    if patches_per_pass is not None and (not isinstance(patches_per_pass, int) or patches_per_pass < 1):
        raise ValueError(f"patches_per_pass must be a positive integer or None, got {patches_per_pass!r}.")
    batch = base_tokens.shape[0]
    per_pass = patches_per_pass or max(1, 64 // batch)  # larger passes run slower per sequence on a CPU (cache misses)
    names = [hook_name(model, activation, layer) for layer in range(model.cfg.n_layers)]
    axes = ACTIVATIONS[activation][1]
    dims = [axes[axis] for axis in by[1:]]
    sizes = [sources[0].shape[d] for d in dims]
    grid = torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(-1, len(sizes)) if sizes else torch.zeros(1, 0, dtype=torch.long)
    with torch.no_grad():
        _, _, shortformer_pos, attention_mask = model.input_to_embed(base_tokens)
    query_axis = "dest_pos" if activation == "pattern" else "pos"  # the positions whose outputs a patch can change
    allowed = torch.ones(len(grid), dtype=torch.bool)
    if positions is not None:
        if query_axis not in by:
            raise ValueError(f"positions needs a {query_axis!r} axis in by, got by={by!r}.")
        n_pos = base_tokens.shape[1]
        wanted = [int(p) for p in positions]
        if not all(-n_pos <= p < n_pos for p in wanted):
            raise ValueError(f"positions must be positions of the prompts (-{n_pos} to {n_pos - 1}), got {list(positions)!r}.")
        allowed = torch.isin(grid[:, by.index(query_axis) - 1], torch.tensor([p % n_pos for p in wanted], dtype=torch.long))
    skip_prefix = query_axis in by and attention_mask is None  # (padding masks would need the prefix re-run)
    first = grid[:, by.index(query_axis) - 1] if skip_prefix else torch.zeros(len(grid), dtype=torch.long)
    order = torch.argsort(first, stable=True)
    keep = ("hook_resid_pre", "attn.hook_k", "attn.hook_v")
    with torch.no_grad():
        base_logits, cache = model.run_with_cache(base_tokens, names_filter=lambda name: name.endswith(keep) or name in names)
    results = torch.full((model.cfg.n_layers, len(grid)), metric_value(metric, base_logits).item())
    chunks = []
    for layer in range(model.cfg.n_layers):
        changed = (sources[layer] != cache[names[layer]]).any(dim=0)
        touched = (_patch_mask(grid[order], dims, changed.shape)[:, 0].to(changed.device) & changed).flatten(1).any(dim=1)
        needed = order[touched.cpu() & allowed[order]]
        chunks += [(layer, needed[i : i + per_pass]) for i in range(0, len(needed), per_pass)]
    for layer, patch_ids in tqdm(chunks, desc=f"patching {activation}", disable=not progress):
        copies, start = len(patch_ids), int(first[patch_ids].min())
        source = sources[layer].narrow(axes[query_axis], start, sources[layer].shape[axes[query_axis]] - start)
        indices = grid[patch_ids].clone()
        if skip_prefix:
            indices[:, by.index(query_axis) - 1] -= start
        mask = _patch_mask(indices, dims, source.shape[1:]).to(source.device)

        def patch(act: Tensor, hook) -> Tensor:
            act = act.reshape(copies, *source.shape)
            return torch.where(mask, source, act).reshape(copies * batch, *source.shape[1:])

        def repeat(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat(copies, *[1] * (x.ndim - 1))

        def prefix(name: str, i: int) -> Tensor:
            return repeat(cache[f"blocks.{i}.attn.hook_{name}"][:, :start]) if i >= layer else cache[f"blocks.{i}.attn.hook_{name}"][:0]

        past = None
        if start > 0:
            entries = [TransformerLensKeyValueCacheEntry(prefix("k", i), prefix("v", i), frozen=True) for i in range(model.cfg.n_layers)]
            past = TransformerLensKeyValueCache(entries, torch.ones(copies * batch, start, dtype=torch.int, device=source.device), frozen=True)
        with torch.no_grad(), model.hooks(fwd_hooks=[(names[layer], patch)]):
            logits = model(
                repeat(cache[f"blocks.{layer}.hook_resid_pre"][:, start:]),
                start_at_layer=layer,
                shortformer_pos_embed=None if shortformer_pos is None else repeat(shortformer_pos[:, start:]),
                attention_mask=repeat(attention_mask),
                past_kv_cache=past,
            )
            logits = torch.cat([repeat(base_logits[:, :start]), logits], dim=1)
        for patch_id, part in zip(patch_ids.tolist(), logits.split(batch)):
            results[layer, patch_id] = metric_value(metric, part).item()
    return results.reshape(model.cfg.n_layers, *sizes)


def _activations(model: HookedTransformer, tokens: Tensor, activation: str) -> list[Tensor]:
    names = [hook_name(model, activation, layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[name] for name in names]


def activation_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activation: str,
    by: Sequence[str] = ("layer", "pos"),
    *,
    direction: str = "denoising",
    patches_per_pass: int | None = None,
    progress: bool = True,
    positions: Sequence[int] | None = None,
) -> Tensor:
    """The metric after patching each component of `activation`, one at a time: shape `[*by sizes]`.

    ``direction="denoising"`` runs the corrupted prompts and restores one clean activation
    (does this component suffice to bring the behaviour back?); ``"noising"`` runs the clean
    prompts and inserts one corrupted activation (is it necessary?). `by` names the index of
    one patch: ``("layer", "pos", "head")`` patches a head at one position, ``("layer", "head")``
    a head at every position. `activation` is a key of `ACTIVATIONS` ("resid_pre", "z",
    "pattern", ...). The metric maps logits of one batch of prompts to a scalar; up to
    `patches_per_pass` patches (default: 64 sequences' worth) share one forward pass.
    Same values as ``transformer_lens.patching`` (one forward pass per patch), many times faster.

    `positions` (for a `by` with a position axis, e.g. ``[10, -1]``) patches only at those
    positions, to save time on a large model; the other entries are not patched and hold the
    unpatched run's metric (the corrupted value when denoising, the clean one when noising).
    """
    check_tokens(clean_tokens, corrupted_tokens)
    by = _check_by(activation, by)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}.")
    base, source = (corrupted_tokens, clean_tokens) if direction == "denoising" else (clean_tokens, corrupted_tokens)
    sources = _activations(model, source, activation)
    return _sweep(model, base, sources, metric, activation, by, patches_per_pass, progress, positions)


def ablation_sweep(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    activation: str,
    by: Sequence[str] = ("layer", "pos"),
    *,
    mode: str = "mean",
    reference_tokens: Int[Tensor, "ref pos"] | None = None,
    seed: int = 0,
    patches_per_pass: int | None = None,
    progress: bool = True,
) -> Tensor:
    """The metric after ablating each component of `activation` on `tokens`, one at a time.

    For comparison with patching: ``"zero"`` sets the component to 0 (off-distribution);
    ``"mean"`` replaces it by its mean over `reference_tokens` (default: `tokens`);
    ``"resample"`` by its value on another prompt: prompt b takes the activation of
    ``reference_tokens[index[b]]``, where ``index = resample_index(batch, n_reference, seed)``.
    """
    check_tokens(tokens, tokens)
    by = _check_by(activation, by)
    if mode not in SWEEP_ABLATIONS:
        raise ValueError(f"mode must be one of {SWEEP_ABLATIONS}, not {mode!r}.")
    if reference_tokens is not None and (reference_tokens.ndim != 2 or reference_tokens.shape[1] != tokens.shape[1]):
        raise ValueError(
            f"reference_tokens must have shape (n, {tokens.shape[1]}) to match the prompts' length, got {tuple(reference_tokens.shape)}."
        )
    reference = tokens if reference_tokens is None else reference_tokens
    if mode == "zero":
        sources = [torch.zeros_like(a) for a in _activations(model, tokens, activation)]
    elif mode == "mean":
        sources = [a.mean(dim=0, keepdim=True).expand(tokens.shape[0], *a.shape[1:]) for a in _activations(model, reference, activation)]
    else:
        index = resample_index(tokens.shape[0], None if reference_tokens is None else len(reference_tokens), seed)
        sources = [a[index] for a in _activations(model, reference, activation)]
    return _sweep(model, tokens, sources, metric, activation, by, patches_per_pass, progress)


def resample_index(batch: int, n_reference: int | None = None, seed: int = 0) -> Int[Tensor, " batch"]:
    """Which reference prompt each prompt takes its activations from in resample ablation.

    With no separate reference set (``n_reference=None``) each prompt gets another prompt of
    the batch, chosen at random, never itself; otherwise a random reference prompt.
    """
    generator = torch.Generator().manual_seed(seed)
    if n_reference is not None:
        return torch.randint(n_reference, (batch,), generator=generator)
    if batch < 2:
        raise ValueError("resample ablation within the batch needs at least 2 prompts; pass reference_tokens.")
    return (torch.arange(batch) + torch.randint(1, batch, (batch,), generator=generator)) % batch


def _specialise(name: str, activation: str, by: tuple[str, ...], what: str) -> Callable[..., Tensor]:
    """A named shortcut for `activation_patching` of one activation and index."""

    def patch(
        model: HookedTransformer,
        clean_tokens: Int[Tensor, "batch pos"],
        corrupted_tokens: Int[Tensor, "batch pos"],
        metric: Metric,
        *,
        direction: str = "denoising",
        patches_per_pass: int | None = None,
        progress: bool = True,
        positions: Sequence[int] | None = None,
    ) -> Tensor:
        return activation_patching(
            model, clean_tokens, corrupted_tokens, metric, activation, by,
            direction=direction, patches_per_pass=patches_per_pass, progress=progress, positions=positions,
        )  # fmt: skip

    patch.__name__ = patch.__qualname__ = name
    patch.__doc__ = f"Activation patching of {what}: a tensor of shape [{', '.join(by)}]. See `activation_patching`."
    return patch


patch_resid_pre = _specialise("patch_resid_pre", "resid_pre", ("layer", "pos"), "the residual stream before each block, by position")
patch_resid_mid = _specialise("patch_resid_mid", "resid_mid", ("layer", "pos"), "the residual stream between attention and MLP, by position")
patch_attn_out = _specialise("patch_attn_out", "attn_out", ("layer", "pos"), "each attention layer's output, by position")
patch_mlp_out = _specialise("patch_mlp_out", "mlp_out", ("layer", "pos"), "each MLP's output, by position")
patch_head_out = _specialise("patch_head_out", "z", ("layer", "head"), "each head's output (hook_z) at every position")
patch_head_out_by_pos = _specialise("patch_head_out_by_pos", "z", ("layer", "pos", "head"), "each head's output (hook_z) at each position")
patch_head_q = _specialise("patch_head_q", "q", ("layer", "head"), "each head's queries at every position")
patch_head_k = _specialise("patch_head_k", "k", ("layer", "head"), "each head's keys at every position")
patch_head_v = _specialise("patch_head_v", "v", ("layer", "head"), "each head's values at every position")
patch_head_q_by_pos = _specialise("patch_head_q_by_pos", "q", ("layer", "pos", "head"), "each head's query at each position")
patch_head_k_by_pos = _specialise("patch_head_k_by_pos", "k", ("layer", "pos", "head"), "each head's key at each position")
patch_head_v_by_pos = _specialise("patch_head_v_by_pos", "v", ("layer", "pos", "head"), "each head's value at each position")
patch_head_pattern = _specialise("patch_head_pattern", "pattern", ("layer", "head"), "each head's whole attention pattern")
patch_head_pattern_by_dest = _specialise("patch_head_pattern_by_dest", "pattern", ("layer", "head", "dest_pos"), "each head's attention pattern, one destination position at a time")
