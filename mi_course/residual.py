"""The residual stream as a sum of parts, and direct logit attribution (DLA).

Every attention head and MLP of a transformer reads the residual stream and adds its
output to it (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits").
The final residual is therefore a sum of parts: token and position embeddings, one term
per head, one attention bias per layer and one MLP output per layer. The final layer norm
is not linear, but it becomes linear once its scale is frozen at the value the cache
recorded, and then each part's direct effect on a logit difference is a dot product. That is a
*direct* effect only: it ignores what a part does through later layers and is not causal
evidence (patching and ablation are).

Functions take a HookedTransformer and an ActivationCache of one forward pass. ``pos``
selects the position read: an int, or one index per prompt when prompts differ in length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer

__all__ = [
    "accumulated_logit_diff",
    "accumulated_resid",
    "apply_final_ln_scale",
    "at_pos",
    "decompose_resid",
    "direct_logit_attribution",
    "direct_path_hooks",
    "head_dla",
    "head_outputs",
    "layer_components",
    "logit_diff",
    "logit_diff_directions",
    "logit_diff_offset",
    "remove_part_hook",
    "top_components",
]

Pos = int | Int[Tensor, "batch"]


def at_pos(x: Float[Tensor, "batch pos *rest"], pos: Pos) -> Float[Tensor, "batch *rest"]:
    """``x`` at one position per prompt (the same int for all, or one index each)."""
    if isinstance(pos, int):
        return x[:, pos]
    return x[torch.arange(x.shape[0], device=x.device), pos.to(x.device)]


def head_outputs(model: HookedTransformer, cache: ActivationCache, layer: int) -> Float[Tensor, "batch pos head d_model"]:
    """What each head of ``layer`` adds to the residual stream (without the shared bias b_O)."""
    z = cache[f"blocks.{layer}.attn.hook_z"]
    return torch.einsum("bphd,hdm->bphm", z, model.W_O[layer])


def layer_components(
    model: HookedTransformer, cache: ActivationCache
) -> tuple[Float[Tensor, "component batch pos d_model"], list[str]]:
    """The final residual at every position as embeddings plus each layer's attention and MLP output."""
    names, labels = ["hook_embed"], ["embed"]
    if "hook_pos_embed" in cache.cache_dict:
        names.append("hook_pos_embed")
        labels.append("pos_embed")
    for layer in range(model.cfg.n_layers):
        names.append(f"blocks.{layer}.hook_attn_out")
        labels.append(f"L{layer} attn")
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
            labels.append(f"L{layer} MLP")
    return torch.stack([cache[name] for name in names]), labels


def decompose_resid(
    model: HookedTransformer, cache: ActivationCache, pos: Pos = -1
) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """The final residual at ``pos`` split into parts that sum to it, with their labels.

    Parts: ``embed``, ``pos_embed`` (when the model adds one), then per layer each head
    ``L{l}H{h}``, the attention bias ``L{l} b_O`` and the MLP ``L{l} MLP`` (when present).
    """
    parts, labels = [at_pos(cache["hook_embed"], pos)], ["embed"]
    if "hook_pos_embed" in cache.cache_dict:
        parts.append(at_pos(cache["hook_pos_embed"], pos))
        labels.append("pos_embed")
    batch = parts[0].shape[0]
    for layer in range(model.cfg.n_layers):
        heads = at_pos(head_outputs(model, cache, layer), pos)
        parts.extend(heads.unbind(1))
        labels.extend(f"L{layer}H{h}" for h in range(model.cfg.n_heads))
        parts.append(model.b_O[layer].expand(batch, -1))
        labels.append(f"L{layer} b_O")
        if not model.cfg.attn_only:
            parts.append(at_pos(cache[f"blocks.{layer}.hook_mlp_out"], pos))
            labels.append(f"L{layer} MLP")
    return torch.stack(parts), labels


def accumulated_resid(
    model: HookedTransformer, cache: ActivationCache, pos: Pos = -1
) -> tuple[Float[Tensor, "layer_plus_1 batch d_model"], list[str]]:
    """The running sum after the embeddings and after each layer (a logit-lens preview)."""
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    labels = ["embed"] + [f"after L{layer}" for layer in range(n)]
    return torch.stack([at_pos(cache[name], pos) for name in names]), labels


def apply_final_ln_scale(
    model: HookedTransformer, stack: Float[Tensor, "... batch d_model"], cache: ActivationCache, pos: Pos = -1
) -> Float[Tensor, "... batch d_model"]:
    """Parts of the final residual as the final layer norm sees them, its scale frozen.

    Centres each part (LayerNorm only; its mean is removed before scaling) and divides by
    the scale the cache recorded for the whole residual. The norm's weight and bias are
    left to :func:`logit_diff_directions` and :func:`logit_diff_offset`.
    """
    if model.cfg.normalization_type is None:
        return stack
    if model.cfg.normalization_type in ("LN", "LNPre"):
        stack = stack - stack.mean(-1, keepdim=True)
    return stack / at_pos(cache["ln_final.hook_scale"], pos)


def logit_diff_directions(
    model: HookedTransformer, answers: Int[Tensor, "batch"], wrong_answers: Int[Tensor, "batch"]
) -> Float[Tensor, "batch d_model"]:
    """The residual direction, per prompt, that raises logit(answer) - logit(wrong answer).

    Includes the final layer norm's weight when the model has one (not folded into W_U).
    """
    directions = (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    return directions * weight if weight is not None else directions


def logit_diff_offset(
    model: HookedTransformer, answers: Int[Tensor, "batch"], wrong_answers: Int[Tensor, "batch"]
) -> Float[Tensor, "batch"]:
    """The part of the logit difference no residual part moves: the biases of ln_final and W_U."""
    offset = model.b_U[answers] - model.b_U[wrong_answers]
    bias = getattr(getattr(model, "ln_final", None), "b", None)
    if bias is not None:
        offset = offset + (model.W_U[:, answers] - model.W_U[:, wrong_answers]).T @ bias
    return offset


def direct_logit_attribution(
    model: HookedTransformer,
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
    pos: Pos = -1,
) -> tuple[Float[Tensor, "component batch"], list[str]]:
    """Each part's direct contribution to logit(answer) - logit(wrong answer), with labels.

    The contributions plus :func:`logit_diff_offset` sum to the model's logit difference.
    """
    parts, labels = decompose_resid(model, cache, pos)
    scaled = apply_final_ln_scale(model, parts, cache, pos)
    return (scaled * logit_diff_directions(model, answers, wrong_answers)).sum(-1), labels


def head_dla(
    model: HookedTransformer,
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
    pos: Pos = -1,
) -> Float[Tensor, "layer head batch"]:
    """Direct logit attribution of every head, arranged as a layer x head grid."""
    heads = torch.stack([at_pos(head_outputs(model, cache, layer), pos) for layer in range(model.cfg.n_layers)])
    scaled = apply_final_ln_scale(model, heads.transpose(1, 2), cache, pos)  # layer head batch d_model
    return (scaled * logit_diff_directions(model, answers, wrong_answers)).sum(-1)


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
    pos: Pos = -1,
) -> Float[Tensor, "batch"]:
    """logit(answer) - logit(wrong answer) at ``pos``, per prompt."""
    last = at_pos(logits, pos)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, answers] - last[rows, wrong_answers]


def accumulated_logit_diff(
    model: HookedTransformer,
    cache: ActivationCache,
    answers: Int[Tensor, "batch"],
    wrong_answers: Int[Tensor, "batch"],
    pos: Pos = -1,
) -> tuple[Float[Tensor, "layer_plus_1 batch"], list[str]]:
    """The logit difference read from the running sum after each layer, final scale frozen.

    The last entry equals the model's logit difference. With the final scale frozen the
    entries are sums of direct attributions; the logit lens proper (``mi_course.lens``)
    recomputes the scale at every layer instead.
    """
    resid, labels = accumulated_resid(model, cache, pos)
    scaled = apply_final_ln_scale(model, resid, cache, pos)
    dla = (scaled * logit_diff_directions(model, answers, wrong_answers)).sum(-1)
    return dla + logit_diff_offset(model, answers, wrong_answers), labels


def remove_part_hook(part: Float[Tensor, "batch d_model"], pos: int = -1) -> Callable[..., Tensor]:
    """A hook that subtracts ``part`` at position ``pos`` of a ``[batch, pos, d_model]`` activation."""

    def hook(resid: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        resid = resid.clone()
        resid[:, pos] -= part
        return resid

    return hook


def direct_path_hooks(
    model: HookedTransformer, cache: ActivationCache, layer: int, head: int, pos: int = -1
) -> list[tuple[str, Callable[..., Tensor]]]:
    """Hooks that mean-ablate one head on its direct path to the logits only.

    In the final residual stream, after every later layer has read the clean value, the head's
    output at ``pos`` is replaced by its mean over the batch, and the final layer norm's scale
    is frozen at its cached value. The logit difference then changes by the head's DLA minus
    the DLA of its mean output: its direct effect, against the same baseline as mean-ablating
    its ``hook_z`` (its total effect, with every later layer and the scale recomputed).
    """
    out = head_outputs(model, cache, layer)[:, pos, head]
    scale = cache["ln_final.hook_scale"]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    freeze = lambda activation, hook=None: scale.clone()  # noqa: E731
    return [(last, remove_part_hook(out - out.mean(0, keepdim=True), pos)), ("ln_final.hook_scale", freeze)]


def top_components(
    values: Float[Tensor, "layer head"], k: int = 3
) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) cells with the largest absolute value, largest first."""
    flat = values.abs().flatten().topk(k).indices
    return [(int(i) // values.shape[1], int(i) % values.shape[1]) for i in flat]
