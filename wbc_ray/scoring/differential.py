"""The per-sample white-cell differential: the count a hematologist would make by hand.

Pure pandas / SciPy, no Ray and no torch: the scoring job hands this the predicted label of
every cell and gets back one row per sample, with percentages, exact confidence intervals
and low/normal/high flags against reference ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

FLAG_LOW, FLAG_NORMAL, FLAG_HIGH = "low", "normal", "high"
FLAG_NO_CELLS = "no_cells"  # in ``flags``: a sample reported without any cell
_ABNORMAL = (FLAG_LOW, FLAG_HIGH)
_REQUIRED = ("sample_id", "label", "needs_review")


def differential(
    cells: pd.DataFrame,
    classes: Sequence[str],
    reference_ranges: Mapping[str, tuple[float, float]],
    min_cells: int,
    confidence: float = 0.95,
    samples: Iterable[str] = (),
) -> pd.DataFrame:
    """Count each sample's cells by predicted class, with exact CIs and reference-range flags.

    ``cells`` has one row per cell: ``sample_id``, ``label`` (a name from ``classes``) and
    ``needs_review`` (bool). Every cell counts towards the differential, flagged for review or
    not; ``needs_review`` is reported as a count so a reader knows how much to trust it.

    Returns one row per ``sample_id`` (sorted) with ``total_cells``, ``needs_review``,
    ``insufficient_count`` (``total_cells < min_cells``), then for each class ``C`` the columns
    ``c_count``, ``c_pct``, ``c_ci_low``, ``c_ci_high`` and ``c_flag`` (``c`` is ``C`` in lower
    case), and finally ``flags``: the abnormal classes as ``"NEUTROPHIL high; EOSINOPHIL low"``,
    or ``""`` when none is. Percentages of a sample sum to 100; a class with no cells in a
    sample gets count 0.

    ``samples``: sample ids to report even without any cell (a lab expects "sample X: 0
    cells", not silence). Such a sample gets ``total_cells`` 0, percentages and intervals
    NaN (there is no estimate), class flags None and ``flags`` = ``"no_cells"``.

    The interval is the Clopper-Pearson exact binomial interval at ``confidence``, in percent
    (``scipy.stats.binomtest(...).proportion_ci(method="exact")``); it is conservative and
    stays inside [0, 100] even for 0 or all cells of a class.

    The flag compares the *point estimate* with ``reference_ranges[C] = (low, high)`` percent,
    bounds inclusive, as a manual differential is read. It deliberately does not use the
    interval: at the usual 100 cells a 95% interval is about +/-10 points wide, so a flag
    requiring the whole interval outside the range would almost never fire, while the
    ``ci_*`` columns let a reader see how firm a borderline flag is. A class without a range
    gets flag None. Ranges are keyed by the names in ``classes``; a key naming no class raises,
    since a misspelt class would otherwise silently lose its flag.
    """
    classes = list(classes)
    _check_args(cells, classes, reference_ranges, min_cells, confidence)
    ids = pd.Index(sorted(set(cells["sample_id"]) | set(samples)), name="sample_id")
    row = pd.Categorical(cells["sample_id"], categories=ids).codes
    col = pd.Categorical(cells["label"], categories=classes).codes
    grid = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(grid, (row, col), 1)
    counts = pd.DataFrame(grid, index=ids, columns=classes)
    total = counts.sum(axis=1)
    review = np.bincount(row, weights=cells["needs_review"].to_numpy(dtype=float),
                         minlength=len(ids))

    out = pd.DataFrame(
        {
            "total_cells": total,
            "needs_review": pd.Series(review, index=ids).astype(np.int64),
            "insufficient_count": total < min_cells,
        }
    )
    ci_low, ci_high = _clopper_pearson_pct(grid, total.to_numpy(), confidence)
    pct = counts.div(total.where(total > 0), axis=0) * 100.0  # NaN without cells
    flags = {}
    for j, name in enumerate(classes):
        prefix = name.lower()
        out[f"{prefix}_count"] = counts[name]
        out[f"{prefix}_pct"] = pct[name]
        out[f"{prefix}_ci_low"] = ci_low[:, j]
        out[f"{prefix}_ci_high"] = ci_high[:, j]
        out[f"{prefix}_flag"] = flags[name] = _flag(pct[name], reference_ranges.get(name))
    out["flags"] = _summarise(pd.DataFrame(flags, index=out.index)).where(
        total > 0, FLAG_NO_CELLS)
    return out.reset_index()


def _check_args(cells, classes, reference_ranges, min_cells, confidence) -> None:
    missing = [c for c in _REQUIRED if c not in cells.columns]
    if missing:
        raise ValueError(f"cells lacks columns {missing}; it has {list(cells.columns)}")
    if cells["sample_id"].isna().any():
        raise ValueError(f"{int(cells['sample_id'].isna().sum())} cells have no sample_id")
    unknown = sorted(set(cells["label"].dropna().astype(str)) - set(classes))
    if unknown or cells["label"].isna().any():
        raise ValueError(f"labels {unknown or [None]} are not among the classes {classes}")
    stray = sorted(set(reference_ranges) - set(classes))
    if stray:
        raise ValueError(f"reference_ranges names {stray}, which are not among {classes}")
    for name, (low, high) in reference_ranges.items():
        if not 0 <= low <= high <= 100:
            raise ValueError(
                f"reference range for {name} must be 0 <= low <= high <= 100 "
                f"percent, got ({low}, {high})"
            )
    if int(min_cells) != min_cells or min_cells < 0:
        raise ValueError(f"min_cells must be a non-negative integer, got {min_cells!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _clopper_pearson_pct(
    counts: np.ndarray, totals: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact intervals in percent for a (samples, classes) count array.

    ``binomtest`` is scalar, so each distinct (k, n) pair is solved once and broadcast back;
    samples of equal size share most pairs, which keeps this cheap for thousands of samples.
    """
    pairs = np.stack(np.broadcast_arrays(counts, totals[:, None]), axis=-1).reshape(-1, 2)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    bounds = np.empty((len(unique), 2))
    for i, (k, n) in enumerate(unique):
        if n == 0:  # no cells: no estimate, no interval
            bounds[i] = np.nan, np.nan
            continue
        ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
        bounds[i] = ci.low, ci.high
    bounds = bounds[inverse.ravel()].reshape(*counts.shape, 2) * 100.0
    return bounds[..., 0], bounds[..., 1]


def _flag(pct: pd.Series, bounds: tuple[float, float] | None) -> pd.Series:
    if bounds is None:
        return pd.Series([None] * len(pct), index=pct.index, dtype=object)
    low, high = bounds
    labels = np.select([pct < low, pct > high], [FLAG_LOW, FLAG_HIGH], default=FLAG_NORMAL)
    return pd.Series(labels, index=pct.index, dtype=object).where(pct.notna(), None)


def _summarise(flags: pd.DataFrame) -> pd.Series:
    names = list(flags.columns)
    text = [
        "; ".join(
            f"{name} {flag}" for name, flag in zip(names, row, strict=True) if flag in _ABNORMAL
        )
        for row in flags.itertuples(index=False)
    ]
    return pd.Series(text, index=flags.index, dtype=object)
