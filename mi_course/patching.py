"""Interventions on a model's activations: ablating attention heads and measuring the effect.

Activations of TransformerLens's per-head hook points (``hook_z``, ``hook_result``,
``hook_q``/``hook_k``/``hook_v``) are laid out ``[batch, pos, head_index, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ABLATION_MODES", "ablate_head_hook", "normalised_effect", "run_with_head_ablated"]

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


def run_with_head_ablated(model, tokens: torch.Tensor, layer: int, head: int, mode: str = "mean") -> torch.Tensor:
    """The logits of ``model`` on ``tokens`` with head ``layer.head`` ablated at ``hook_z``."""
    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate_head_hook(head, mode))])


def normalised_effect(clean: float, intervened: float, baseline: float) -> float:
    """How far an intervention moves a metric from its clean value towards a baseline.

    0 means no effect, 1 means the metric fell all the way to the baseline (for example the
    value on inputs where the behaviour is impossible). Works for metrics where higher is
    better (logit difference) and lower is better (loss) alike.
    """
    return float((clean - intervened) / (clean - baseline))
