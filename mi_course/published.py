"""Published figures on GPT-2 small, printed beside what a notebook measures.

When a notebook runs with ``MODEL_NAME = "gpt2-small"``, its numbers can be compared with
the papers'. Each figure carries its source, so the notebook never states a number without
one. The figures come from ../shared/REFERENCE.md; a measured figure close to the published
one is evidence that the notebook's setup matches the paper's, not a test of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "Published", "beside"]


@dataclass(frozen=True)
class Published:
    """One published figure: what it is, its value (a number or a list of heads) and its source."""

    what: str
    value: float | tuple[str, ...]
    source: str
    unit: str = ""


PUBLISHED: dict[str, Published] = {
    "ioi_logit_diff": Published("IOI mean logit difference (IO - S)", 3.56, "Wang et al. 2023"),
    "ioi_io_preferred": Published("IOI prompts where IO beats S", 0.993, "Wang et al. 2023", unit="%"),
    "greater_than_prob_diff": Published("greater-than probability difference", 0.82, "Hanna et al. 2023"),
    "induction_heads": Published(
        "induction heads on repeated random tokens", ("L5H1", "L5H5", "L6H9", "L7H2", "L7H10"), "ARENA, induction mosaic"
    ),
    "ioi_name_movers": Published("IOI name movers", ("L9H9", "L10H0", "L9H6"), "Wang et al. 2023"),
    "ioi_negative_name_movers": Published("IOI negative name movers", ("L10H7", "L11H10"), "Wang et al. 2023"),
    "ioi_backup_name_movers": Published(
        "IOI backup name movers", ("L10H10", "L10H6", "L10H2", "L10H1", "L11H2", "L9H7", "L9H0", "L11H9"), "Wang et al. 2023"
    ),
    "ioi_s_inhibition": Published("IOI S-inhibition heads", ("L7H3", "L7H9", "L8H6", "L8H10"), "Wang et al. 2023"),
    "ioi_induction": Published("IOI induction heads", ("L5H5", "L5H8", "L5H9", "L6H9"), "Wang et al. 2023"),
    "ioi_duplicate_token": Published("IOI duplicate-token heads", ("L0H1", "L0H10", "L3H0"), "Wang et al. 2023"),
    "ioi_previous_token": Published("IOI previous-token heads", ("L2H2", "L4H11"), "Wang et al. 2023"),
}


def _format(value: float | tuple[str, ...] | list, unit: str) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}"


def beside(key: str, measured: float | tuple[str, ...] | list) -> str:
    """One line: the measured figure and the published one, with its source.

    ``measured`` is a number, or a list of head names such as ``["L5H5", "L6H9"]``.
    """
    if key not in PUBLISHED:
        raise KeyError(f"no published figure {key!r}; the figures are: {', '.join(PUBLISHED)}")
    fig = PUBLISHED[key]
    return f"{fig.what}: measured {_format(measured, fig.unit)}; published {_format(fig.value, fig.unit)} ({fig.source})"
