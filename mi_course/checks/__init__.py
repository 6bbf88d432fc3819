"""Auto-checks of the exercises: one module per notebook (``nb00`` ... ``nb08``)."""

from mi_course.checks.core import CheckFailed, check_function, check_value

__all__ = ["CheckFailed", "check_function", "check_value"]
