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


def test_ioi_head_classes_match_the_reference_and_do_not_overlap():
    """Wang et al.'s head classes as in the course's reference (REFERENCE.md), each head in one class."""
    assert PUBLISHED["ioi_negative_name_movers"].value == ("L10H7", "L11H10")
    assert PUBLISHED["ioi_backup_name_movers"].value == ("L10H10", "L10H6", "L10H2", "L10H1", "L11H2", "L9H7", "L9H0", "L11H9")
    classes = [key for key in PUBLISHED if key.startswith("ioi_") and isinstance(PUBLISHED[key].value, tuple)]
    assert len(classes) == 7 and all(PUBLISHED[key].source == "Wang et al. 2023" for key in classes)
    heads = [head for key in classes for head in PUBLISHED[key].value]
    assert len(heads) == len(set(heads)), "a head listed in two IOI classes"
    for head in heads:  # GPT-2 small has 12 layers of 12 heads
        layer, index = map(int, head[1:].split("H"))
        assert 0 <= layer < 12 and 0 <= index < 12, head
    line = beside("ioi_backup_name_movers", ["L10H10"])
    assert "measured L10H10" in line and "L11H9 (Wang et al. 2023)" in line
