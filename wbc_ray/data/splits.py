"""Train/val/test assignment. The paper's numbers depend on which one you pick.

- ``paper``: stratified random 70/20/10 of all images (the paper's protocol; on the
  Kaggle set it leaks augmented copies of the same original into test).
- ``official``: the folder split as given (TRAIN -> train/val, VAL -> val, TEST -> test).
- ``grouped``: 70/20/10 by a group column (source original, patient, slide); no group
  crosses splits; stratified by label as far as the groups allow.

With ``folds`` (k-fold cross-validation, ``paper`` or ``grouped``): fold ``fold`` of k
stratified (and, for ``grouped``, group-disjoint) folds is the test part; validation is
carved from the other folds the same way (by the fractions' train:val ratio), so every
image is a test image in exactly one of the k runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from wbc_ray.config import KFOLD_SPLITS
from wbc_ray.data.sources import SPLIT_NAMES

Fractions = tuple[float, float, float]


def _check(fractions: Fractions) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, "
                         f"got {fractions}")


def _stratified(df: pd.DataFrame, fractions: Fractions, seed: int) -> pd.Series:
    train_f, val_f, test_f = fractions
    out = pd.Series("train", index=df.index, dtype=object)
    rest = df.index
    if test_f > 0:
        rest, test = train_test_split(df.index, test_size=test_f, random_state=seed,
                                      stratify=df["label"])
        out[test] = "test"
    if val_f > 0:
        _, val = train_test_split(rest, test_size=val_f / (train_f + val_f),
                                  random_state=seed + 1, stratify=df.loc[rest, "label"])
        out[val] = "val"
    return out


def _need_groups(df: pd.DataFrame) -> None:
    if "group" not in df or df["group"].isna().any():
        raise ValueError("grouped split needs a group for every image: pass --groups CSV, "
                         "--groups near-duplicates, or a manifest with a 'group' column")


def _grouped(df: pd.DataFrame, fractions: Fractions, seed: int) -> pd.Series:
    """Folds of StratifiedGroupKFold, dealt out to train/val/test by the fractions."""
    _need_groups(df)
    n_groups = df["group"].nunique()
    # sklearn needs some class with at least n_folds members
    n_folds = min(20, n_groups, int(df["label"].value_counts().max()))
    if n_folds < 3:
        raise ValueError(f"grouped split needs at least 3 groups, found {n_groups}")
    folds = np.empty(len(df), dtype=int)
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, idx) in enumerate(sgkf.split(df, df["label"], df["group"])):
        folds[idx] = k
    # Deal whole folds: the first ~10% of folds to test, the next ~20% to val.
    n_test = max(1, round(fractions[2] * n_folds)) if fractions[2] > 0 else 0
    n_val = max(1, round(fractions[1] * n_folds)) if fractions[1] > 0 else 0
    names = np.array(["test"] * n_test + ["val"] * n_val + ["train"] * (n_folds - n_test - n_val))
    return pd.Series(names[folds], index=df.index, dtype=object)


def _official(df: pd.DataFrame, fractions: Fractions, seed: int) -> pd.Series:
    if df["folder_split"].isna().all():
        raise ValueError("official split needs split folders (TRAIN/TEST) or a manifest "
                         "'split' column")
    given = df["folder_split"].astype(str).str.upper().map(SPLIT_NAMES)
    out = given.astype(object)
    train = df[given == "train"]
    if (given == "val").sum() == 0 and len(train):
        # Carve validation out of TRAIN; by group when groups are known (no leakage into val).
        f = fractions[1] / (fractions[0] + fractions[1])
        use_groups = "group" in train and train["group"].notna().all()
        carve = _grouped if use_groups else _stratified
        out[train.index] = carve(train, (1 - f, f, 0.0), seed).replace({"test": "val"})
    return out.where(out.notna(), None)


def _kfold(df: pd.DataFrame, mode: str, fractions: Fractions, seed: int, folds: int,
           fold: int) -> pd.Series:
    grouped = mode == "grouped"
    if grouped:
        _need_groups(df)
    labels = df["label"]
    if int(labels.value_counts().min()) < folds:
        raise ValueError(f"{folds}-fold split needs at least {folds} images of every class; "
                         f"counts: {labels.value_counts().to_dict()}")
    splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if grouped
                else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    parts = list(splitter.split(df, labels, df["group"] if grouped else None))
    rest_idx, test_idx = parts[fold]
    out = pd.Series("test", index=df.index, dtype=object)
    rest = df.iloc[rest_idx]
    f = fractions[1] / (fractions[0] + fractions[1])
    carve = _grouped if grouped else _stratified
    out[rest.index] = carve(rest, (1 - f, f, 0.0), seed).replace({"test": "val"})
    return out


def _all_test(df: pd.DataFrame, fractions: Fractions, seed: int) -> pd.Series:
    """Evaluation of a separate labelled set: every image is a test image."""
    return pd.Series("test", index=df.index, dtype=object)


SPLITTERS: dict[str, Callable[[pd.DataFrame, Fractions, int], pd.Series]] = {
    "all": _all_test,
    "paper": _stratified,
    "grouped": _grouped,
    "official": _official,
}


def assign_splits(records: pd.DataFrame, mode: str, fractions: Fractions = (0.7, 0.2, 0.1),
                  seed: int = 0, folds: int | None = None, fold: int = 0) -> pd.DataFrame:
    """Return ``records`` with a ``split`` column in {train, val, test, None (unused)}.

    ``folds``: k-fold cross-validation, ``fold`` (0..k-1) the test fold (module docs).
    """
    _check(fractions)
    if folds is not None and (mode not in KFOLD_SPLITS or folds < 2 or not 0 <= fold < folds):
        raise ValueError(f"k-fold needs split in {KFOLD_SPLITS}, folds >= 2 and "
                         f"0 <= fold < folds; got split={mode!r} folds={folds} fold={fold}")
    if mode not in SPLITTERS:
        raise ValueError(f"unknown split {mode!r}; choose one of {sorted(SPLITTERS)}")
    if records["label"].isna().any():
        raise ValueError("every image needs a label to be split for training")
    out = records.copy()
    out["split"] = (SPLITTERS[mode](out, fractions, seed) if folds is None
                    else _kfold(out, mode, fractions, seed, folds, fold))
    return out
