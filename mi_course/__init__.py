"""mi_course: models, tasks, reference implementations and exercise checks of the course."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ground_truth", "load_model"]


def __getattr__(name: str):
    # Lazy, so that `import mi_course` (and the CLI) stays fast.
    if name in {"load_model", "ground_truth"}:
        from mi_course import models

        return getattr(models, name)
    raise AttributeError(f"module 'mi_course' has no attribute {name!r}")
