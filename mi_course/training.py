"""Training and saving the small models of the course's model zoo.

`train` is a plain next-token training loop (AdamW, linear warmup then cosine decay);
`save_model` writes a trained model into a zoo folder that `mi_course.load_model` reads:

    mi_course/zoo/<name>/config.json        the config fields needed to rebuild the model
    mi_course/zoo/<name>/model.safetensors  the float32 parameters
    mi_course/zoo/<name>/tokenizer.json     the `tokenizers` tokenizer
    mi_course/zoo/<name>/MODEL_CARD.md      data, architecture, training, metrics
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

__all__ = ["CONFIG_FIELDS", "next_token_loss", "save_model", "train"]

# The HookedTransformerConfig fields written to config.json: enough to rebuild any model of
# the zoo. Everything else keeps HookedTransformerConfig's default.
CONFIG_FIELDS = (
    "model_name",
    "n_layers",
    "d_model",
    "n_ctx",
    "d_head",
    "n_heads",
    "d_mlp",
    "d_vocab",
    "d_vocab_out",
    "act_fn",
    "attn_only",
    "normalization_type",
    "positional_embedding_type",
    "eps",
    "use_attn_scale",
    "attn_scale",
    "final_rms",
    "gated_mlp",
    "parallel_attn_mlp",
    "original_architecture",
    "default_prepend_bos",
)


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos-1"] | None = None,
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting token t+1 at position t, over the positions in `mask`."""
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    if mask is None:
        return losses.mean()
    mask = mask.flatten()
    if not mask.any():
        raise ValueError("loss_mask selects no position: the loss would be undefined. Return True where the loss counts.")
    return losses[mask].mean()


def _check_batch(tokens: Tensor, model: HookedTransformer, step: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        got = f"{type(tokens).__name__} {getattr(tokens, 'dtype', '')} {tuple(getattr(tokens, 'shape', ()))}"
        raise ValueError(f"batches({step}) must return an integer tensor of shape (batch, pos); got {got}.")
    if tokens.shape[1] < 2 or tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"batches({step}) returned {tokens.shape[1]} positions; need 2 to n_ctx={model.cfg.n_ctx}.")
    if tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab:
        raise ValueError(f"batches({step}) returned token ids outside [0, d_vocab={model.cfg.d_vocab}).")


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warmup from 0 to 1 over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: HookedTransformer,
    batches: Callable[[int], Int[Tensor, "batch pos"]],
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int = 100,
    loss_mask: Callable[[Int[Tensor, "batch pos"]], Bool[Tensor, "batch pos-1"]] | None = None,
    seed: int = 0,
) -> list[float]:
    """Train `model` in place on next-token prediction and return the loss of every step.

    `batches(step)` gives the tokens of that step (make it deterministic in `step`, so that a
    run is reproducible); `loss_mask(tokens)` picks the predictions that count (all if None).
    The model is left in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    torch.manual_seed(seed)
    warmup = min(warmup, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, steps))
    device = next(model.parameters()).device
    losses = []
    model.train()
    progress = tqdm(range(steps), desc="training")
    for step in progress:
        tokens = batches(step)
        _check_batch(tokens, model, step)
        tokens = tokens.to(device)
        mask = None
        if loss_mask is not None:
            mask = loss_mask(tokens)
            if mask.shape != (tokens.shape[0], tokens.shape[1] - 1) or mask.dtype != torch.bool:
                raise ValueError(
                    f"loss_mask must return a bool tensor of shape (batch, pos-1) = "
                    f"{(tokens.shape[0], tokens.shape[1] - 1)}; got {mask.dtype} {tuple(mask.shape)}."
                )
        loss = next_token_loss(model(tokens), tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def save_model(model: HookedTransformer, tokenizer: PreTrainedTokenizerFast, directory: Path, card: str) -> None:
    """Write model and tokenizer as a zoo folder (config.json, model.safetensors, tokenizer.json, MODEL_CARD.md)."""
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"tokenizer must be a transformers PreTrainedTokenizerFast, got {type(tokenizer).__name__}.")
    if tokenizer.bos_token is None:
        raise ValueError("the tokenizer has no bos_token; the zoo's models all start with BOS. Set bos_token.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg.to_dict()
    config = {
        "model": {field: cfg[field] for field in CONFIG_FIELDS},
        "tokenizer": {
            name: getattr(tokenizer, name)
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
            if getattr(tokenizer, name) is not None
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Parameters only: the buffers (causal mask, IGNORE) are rebuilt from the config.
    state = {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in model.named_parameters()}
    save_file(state, directory / "model.safetensors")
    (directory / "model.safetensors").chmod(0o644)  # safetensors creates it readable by the owner only
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "MODEL_CARD.md").write_text(card if card.endswith("\n") else card + "\n")
