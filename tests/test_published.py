"""Published GPT-2 figures: every one carries a source, and `beside` prints both figures."""

from __future__ import annotations

import pytest

from mi_course.published import PUBLISHED, beside


def test_every_figure_has_a_source_that_names_a_year_or_course():
    for key, fig in PUBLISHED.items():
        assert fig.source and (any(ch.isdigit() for ch in fig.source) or "ARENA" in fig.source), key


def test_beside_prints_measured_and_published_with_source():
    line = beside("ioi_logit_diff", 3.123)
    assert "measured 3.12" in line and "published 3.56" in line and "Wang et al. 2023" in line
    assert "measured 98.0%" in beside("ioi_io_preferred", 0.98) and "published 99.3%" in beside("ioi_io_preferred", 0.98)
    heads = beside("induction_heads", ["L5H5", "L6H9"])
    assert "measured L5H5, L6H9" in heads and "L7H10" in heads


def test_unknown_figure_names_the_known_ones():
    with pytest.raises(KeyError, match="ioi_logit_diff"):
        beside("ioi_logit_difference", 1.0)
