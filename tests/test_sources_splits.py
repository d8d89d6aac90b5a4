"""Listing folders and manifests, class normalisation, and every split mode."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.data.sources import attach_groups, find_groups_file, list_inputs
from wbc_ray.data.splits import assign_splits


def test_kaggle_layout_with_split_level(kaggle):
    listing = list_inputs(str(kaggle / "images"), PAPER_CLASSES)
    rec = listing.records
    assert len(rec) == 12_515 and listing.rejected.empty
    assert set(rec["folder_split"]) == {"TRAIN", "TEST", "TEST_SIMPLE"}
    assert rec.groupby("folder_split").size()["TRAIN"] == 9_957
    assert rec[rec.folder_split == "TEST"].groupby("label").size()["MONOCYTE"] == 620


def test_groups_join_from_source_originals(kaggle):
    listing = list_inputs(str(kaggle / "images"), PAPER_CLASSES)
    found = find_groups_file(str(kaggle / "images"))
    assert found and found.endswith("source_originals.csv")
    grouped = attach_groups(listing, found, "best_original")
    assert grouped.records["group"].nunique() > 300


def test_flat_layout_normalises_and_rejects(tmp_path):
    for folder, names in {"eosinophil": ["a.jpg"], "Lymphocytes": ["b.png"],
                          "PLATELET": ["c.jpg"]}.items():
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"x")
    (tmp_path / "README.txt").write_text("hi")
    listing = list_inputs(str(tmp_path), PAPER_CLASSES)
    assert sorted(listing.records["label"]) == ["EOSINOPHIL", "LYMPHOCYTE"]
    reasons = dict(zip(listing.rejected["uri"].str.rsplit("/", n=1).str[-1],
                       listing.rejected["reason"], strict=True))
    assert "unknown class folder 'PLATELET'" in reasons["c.jpg"]
    assert reasons["README.txt"] == "file outside a class folder"
    assert listing.seen == 4


def test_manifest_relative_uris_labels_and_boxes(tmp_path):
    pd.DataFrame({"uri": ["imgs/a.jpg", "/abs/b.jpg", "imgs/c.jpg"],
                  "label": ["Eosinophil", "mono", "alien"], "sample_id": ["S1", "S1", "S2"],
                  "xmin": [1, None, 2], "ymin": [1, None, 2], "xmax": [9, None, 8],
                  "ymax": [9, None, 8]}).to_csv(tmp_path / "m.csv", index=False)
    listing = list_inputs(str(tmp_path / "m.csv"), PAPER_CLASSES)
    rec = listing.records.set_index("label")
    assert rec.loc["EOSINOPHIL", "uri"] == str(tmp_path / "imgs/a.jpg")
    assert rec.loc["MONOCYTE", "uri"] == "/abs/b.jpg"
    assert rec.loc["EOSINOPHIL", "xmax"] == 9
    assert listing.rejected["reason"].tolist() == ["unknown label 'alien'"]


def test_missing_uri_fails_fast_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_inputs(str(tmp_path / "nope"), PAPER_CLASSES)


def _frame(n_groups: int, per_group: list[int], seed: int) -> pd.DataFrame:
    rows = []
    for g in range(n_groups):
        label = PAPER_CLASSES[(g * 7 + seed) % 4]
        rows += [{"path": f"{g}/{i}", "label": label, "group": f"g{g}", "folder_split": None}
                 for i in range(per_group[g % len(per_group)])]
    return pd.DataFrame(rows)


@settings(max_examples=25, deadline=None)
@given(n_groups=st.integers(12, 80), per_group=st.lists(st.integers(1, 12), min_size=1,
                                                        max_size=5), seed=st.integers(0, 99))
def test_grouped_split_never_shares_a_group(n_groups, per_group, seed):
    out = assign_splits(_frame(n_groups, per_group, seed), "grouped", seed=seed)
    assert (out.groupby("group")["split"].nunique() == 1).all()
    assert set(out["split"]) <= {"train", "val", "test"}
    sizes = out["split"].value_counts()
    assert sizes.idxmax() == "train" or sizes["train"] == sizes.max()


def test_grouped_split_fractions_and_stratification(kaggle):
    listing = list_inputs(str(kaggle / "images"), PAPER_CLASSES)
    rec = attach_groups(listing, find_groups_file(str(kaggle / "images")), "best_original").records
    out = assign_splits(rec, "grouped", seed=0)
    frac = out["split"].value_counts(normalize=True)
    assert 0.6 < frac["train"] < 0.8 and 0.12 < frac["val"] < 0.28 and 0.05 < frac["test"] < 0.16
    assert set(out[out.split == "test"]["label"]) == set(PAPER_CLASSES)
    assert (out.groupby("group")["split"].nunique() == 1).all()


def test_paper_split_is_stratified_and_reproducible():
    df = _frame(40, [10], 0)
    a, b = assign_splits(df, "paper", seed=3), assign_splits(df, "paper", seed=3)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != assign_splits(df, "paper", seed=4)["split"].tolist()
    counts = a.groupby(["label", "split"]).size().unstack()
    assert ((counts["train"] / counts.sum(1)).between(0.65, 0.75)).all()


def test_official_split_uses_folders_and_carves_val_from_train(kaggle):
    listing = list_inputs(str(kaggle / "images"), PAPER_CLASSES)
    rec = attach_groups(listing, find_groups_file(str(kaggle / "images")), "best_original").records
    out = assign_splits(rec, "official")
    assert (out[out.folder_split == "TEST"]["split"] == "test").all()
    assert out[out.folder_split == "TEST_SIMPLE"]["split"].isna().all()  # unused, counted
    train_part = out[out.folder_split == "TRAIN"]
    assert set(train_part["split"]) == {"train", "val"}
    tv = train_part.groupby("group")["split"].nunique()
    assert (tv == 1).all()  # val carved by group: no original in both


def test_grouped_needs_groups():
    with pytest.raises(ValueError, match="group"):
        assign_splits(_frame(20, [3], 0).drop(columns="group"), "grouped")


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(_frame(20, [3], 0), "paper", fractions=(0.7, 0.2, 0.2))
