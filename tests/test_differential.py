"""The per-sample differential against hand counts and textbook exact intervals."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wbc_ray.classes import LISC_CLASSES, PAPER_CLASSES
from wbc_ray.scoring.differential import differential

# The paper's normal ranges, percent.
RANGES = {
    "NEUTROPHIL": (50.0, 70.0),
    "LYMPHOCYTE": (20.0, 40.0),
    "MONOCYTE": (3.0, 9.0),
    "EOSINOPHIL": (2.0, 4.0),
}


def make_cells(counts_by_sample: dict[str, dict[str, int]], review_every: int = 0) -> pd.DataFrame:
    """One row per cell; every ``review_every``-th cell of a sample needs review."""
    rows = []
    for sample, counts in counts_by_sample.items():
        labels = [name for name, k in counts.items() for _ in range(k)]
        for i, label in enumerate(labels):
            review = bool(review_every) and i % review_every == 0
            rows.append({"sample_id": sample, "label": label, "needs_review": review})
    return pd.DataFrame(rows, columns=["sample_id", "label", "needs_review"])


def one_row(df: pd.DataFrame, sample_id) -> pd.Series:
    (row,) = df.loc[df["sample_id"] == sample_id].to_dict("records")
    return pd.Series(row)


def test_hundred_cell_normal_and_abnormal_samples():
    cells = make_cells(
        {
            # 60/30/6/3/1: every class inside its range; basophils have no range.
            "normal": {
                "NEUTROPHIL": 60,
                "LYMPHOCYTE": 30,
                "MONOCYTE": 6,
                "EOSINOPHIL": 3,
                "BASOPHIL": 1,
            },
            # 75/15/5/5: neutrophilia, lymphopenia, eosinophilia.
            "abnormal": {"NEUTROPHIL": 75, "LYMPHOCYTE": 15, "MONOCYTE": 5, "EOSINOPHIL": 5},
        },
        review_every=10,
    )
    out = differential(cells, LISC_CLASSES, RANGES, min_cells=100)
    assert list(out["sample_id"]) == ["abnormal", "normal"]

    normal = one_row(out, "normal")
    assert normal["total_cells"] == 100
    assert normal["needs_review"] == 10
    assert not normal["insufficient_count"]
    for name, pct in {
        "NEUTROPHIL": 60,
        "LYMPHOCYTE": 30,
        "MONOCYTE": 6,
        "EOSINOPHIL": 3,
        "BASOPHIL": 1,
    }.items():
        assert normal[f"{name.lower()}_count"] == pct
        assert normal[f"{name.lower()}_pct"] == pytest.approx(pct)
    assert normal["neutrophil_flag"] == "normal"
    assert normal["basophil_flag"] is None
    assert normal["flags"] == ""

    abnormal = one_row(out, "abnormal")
    assert abnormal["basophil_count"] == 0
    assert (abnormal["neutrophil_flag"], abnormal["lymphocyte_flag"]) == ("high", "low")
    assert (abnormal["monocyte_flag"], abnormal["eosinophil_flag"]) == ("normal", "high")
    assert abnormal["flags"] == "EOSINOPHIL high; LYMPHOCYTE low; NEUTROPHIL high"


def test_range_bounds_count_as_normal():
    cells = make_cells({"s": {"NEUTROPHIL": 50, "LYMPHOCYTE": 40, "MONOCYTE": 6, "EOSINOPHIL": 4}})
    row = one_row(differential(cells, PAPER_CLASSES, RANGES, min_cells=100), "s")
    assert row["neutrophil_flag"] == row["lymphocyte_flag"] == row["eosinophil_flag"] == "normal"


def test_column_layout():
    out = differential(make_cells({"s": {"A": 2, "B": 1}}), ["A", "B"], {"A": (0, 50)}, 1)
    assert list(out.columns) == [
        "sample_id", "total_cells", "needs_review", "insufficient_count",
        "a_count", "a_pct", "a_ci_low", "a_ci_high", "a_flag",
        "b_count", "b_pct", "b_ci_low", "b_ci_high", "b_flag",
        "flags",
    ]  # fmt: skip


def test_clopper_pearson_textbook_values():
    cells = make_cells({"s": {"A": 0, "B": 10}, "t": {"A": 5, "B": 5}})
    out = differential(cells, ["A", "B"], {}, min_cells=10)
    s, t = one_row(out, "s"), one_row(out, "t")
    # 0 of 10: the exact upper bound solves (1 - p)^10 = 0.025, so 1 - 0.025^(1/10) = 30.85%.
    assert s["a_ci_low"] == 0.0
    assert s["a_ci_high"] == pytest.approx(100 * (1 - 0.025 ** (1 / 10)))
    assert s["a_ci_high"] == pytest.approx(30.85, abs=0.005)
    # 10 of 10 mirrors it: lower bound 0.025^(1/10) = 69.15%, upper 100%.
    assert s["b_ci_low"] == pytest.approx(69.15, abs=0.005)
    assert s["b_ci_high"] == 100.0
    # 5 of 10: the textbook exact 95% interval is (0.1871, 0.8129).
    assert t["a_ci_low"] == pytest.approx(18.71, abs=0.005)
    assert t["a_ci_high"] == pytest.approx(81.29, abs=0.005)


def test_confidence_level_changes_the_width():
    cells = make_cells({"s": {"A": 0, "B": 10}})
    out = differential(cells, ["A", "B"], {}, min_cells=1, confidence=0.90)
    # (1 - p)^10 = 0.05 -> 1 - 0.05^(1/10) = 25.89%
    assert out.loc[0, "a_ci_high"] == pytest.approx(25.89, abs=0.005)


def test_insufficient_count_below_min_cells():
    cells = make_cells({"short": {"NEUTROPHIL": 99}, "enough": {"NEUTROPHIL": 100}})
    out = differential(cells, PAPER_CLASSES, RANGES, min_cells=100)
    assert bool(one_row(out, "short")["insufficient_count"]) is True
    assert bool(one_row(out, "enough")["insufficient_count"]) is False


def test_missing_class_gets_zero_count_and_zero_lower_bound():
    cells = make_cells({"s": {"NEUTROPHIL": 70, "LYMPHOCYTE": 30}})
    row = one_row(differential(cells, PAPER_CLASSES, RANGES, min_cells=100), "s")
    for name in ("monocyte", "eosinophil"):
        assert row[f"{name}_count"] == 0
        assert row[f"{name}_pct"] == 0.0
        assert row[f"{name}_ci_low"] == 0.0
        assert row[f"{name}_flag"] == "low"
    assert row["flags"] == "EOSINOPHIL low; MONOCYTE low"


def test_no_cells_gives_an_empty_frame_with_all_columns():
    out = differential(make_cells({}), PAPER_CLASSES, RANGES, min_cells=100)
    assert out.empty
    assert "neutrophil_ci_high" in out.columns and "flags" in out.columns


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cells": pd.DataFrame({"sample_id": [1], "label": ["A"]})}, "needs_review"),
        ({"cells": make_cells({"s": {"Z": 1}})}, "'Z'"),
        ({"reference_ranges": {"NEUTROPHILS": (50, 70)}}, "NEUTROPHILS"),
        ({"reference_ranges": {"A": (70, 50)}}, "low <= high"),
        (
            {"cells": pd.DataFrame({"sample_id": [None], "label": ["A"], "needs_review": [False]})},
            "no sample_id",
        ),
        ({"min_cells": -1}, "min_cells"),
        ({"confidence": 95}, "confidence"),
    ],
)
def test_bad_arguments_raise_readable_errors(kwargs, match):
    args = {
        "cells": make_cells({"s": {"A": 3}}),
        "classes": ["A", "B"],
        "reference_ranges": {},
        "min_cells": 1,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        differential(**args)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=60), min_size=4, max_size=4).filter(
            lambda counts: sum(counts) > 0
        ),
        min_size=1,
        max_size=4,
    )
)
def test_property_percentages_sum_to_100_and_intervals_contain_the_estimate(samples):
    names = ["P", "Q", "R", "S"]
    cells = make_cells(
        {f"s{i}": dict(zip(names, counts, strict=True)) for i, counts in enumerate(samples)}
    )
    out = differential(cells, names, {"P": (10, 30)}, min_cells=50)
    assert len(out) == len(samples)
    for i, counts in enumerate(samples):
        row = one_row(out, f"s{i}")
        assert row["total_cells"] == sum(counts)
        assert bool(row["insufficient_count"]) == (sum(counts) < 50)
        assert sum(row[f"{n.lower()}_pct"] for n in names) == pytest.approx(100, abs=1e-9)
        for name, k in zip(names, counts, strict=True):
            c = name.lower()
            assert row[f"{c}_count"] == k
            assert 0 <= row[f"{c}_ci_low"] <= row[f"{c}_pct"] <= row[f"{c}_ci_high"] <= 100
            assert (row[f"{c}_ci_low"] == 0) == (k == 0)
            assert (row[f"{c}_ci_high"] == 100) == (k == sum(counts))


def test_samples_without_cells_get_a_zero_row_flagged_no_cells():
    cells = make_cells({"s": {"NEUTROPHIL": 60, "LYMPHOCYTE": 30, "MONOCYTE": 6,
                              "EOSINOPHIL": 4}})
    out = differential(cells, PAPER_CLASSES, RANGES, min_cells=100, samples=["empty", "s"])
    assert list(out["sample_id"]) == ["empty", "s"]
    empty, full = one_row(out, "empty"), one_row(out, "s")
    assert (empty["total_cells"], empty["needs_review"]) == (0, 0)
    assert bool(empty["insufficient_count"]) is True
    assert empty["flags"] == "no_cells"
    for name in PAPER_CLASSES:
        c = name.lower()
        assert empty[f"{c}_count"] == 0 and empty[f"{c}_flag"] is None
        assert pd.isna(empty[f"{c}_pct"]) and pd.isna(empty[f"{c}_ci_low"])
        assert pd.isna(empty[f"{c}_ci_high"])
    assert full["total_cells"] == 100 and full["flags"] == ""  # unchanged by the empty one
    assert list(out.columns) == list(differential(cells, PAPER_CLASSES, RANGES, 100).columns)


def test_only_empty_samples():
    out = differential(make_cells({}), ["A", "B"], {"A": (0, 50)}, min_cells=0,
                       samples=["x"])
    row = one_row(out, "x")
    assert row["total_cells"] == 0 and row["flags"] == "no_cells"
    assert bool(row["insufficient_count"]) is False  # 0 < 0 is False: min_cells 0 asks none
    assert row["a_flag"] is None
