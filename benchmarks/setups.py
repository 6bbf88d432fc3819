"""The benchmark input shared by the patching and attribution benchmarks: toy-lm on IOI."""

from __future__ import annotations

from mi_course import load_model
from mi_course.tasks import make_task


def toy_lm_ioi(batch: int):
    """(model, clean, corrupted, metric, description) for toy-lm on `batch` IOI prompts."""
    model = load_model("toy-lm")
    task = make_task("ioi", model, n=batch, seed=0)
    cfg = model.cfg
    desc = (
        f"toy-lm ({cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads) on IOI, "
        f"batch {batch}, {task.clean_tokens.shape[1]} positions"
    )
    return model, task.clean_tokens, task.corrupted_tokens, task.metric, desc
