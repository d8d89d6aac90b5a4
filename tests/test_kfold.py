"""k-fold cross-validation: folds cover every image once, grouped folds keep groups together,
near-duplicate groups join real copies, and the pooled CV metrics equal metrics over all
the folds' predictions."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from wbc_ray.config import ConfigError, DataConfig
from wbc_ray.data.prepare import list_labelled, split_records
from wbc_ray.evaluation.metrics import compute_metrics
from wbc_ray.workflows.cv import pool


@pytest.fixture(scope="module")
def lisc_copy(lisc, tmp_path_factory):
    """The LISC crops (4 classes) plus planted near-copies: a flipped and a rotated copy of
    one neutrophil, a resaved JPEG of one lymphocyte."""
    root = tmp_path_factory.mktemp("lisc")
    for cls in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"):
        shutil.copytree(lisc / cls, root / cls)
    neu = sorted((root / "NEUTROPHIL").iterdir())[0]
    im = Image.open(neu).convert("RGB")
    im.transpose(Image.FLIP_LEFT_RIGHT).save(root / "NEUTROPHIL" / "copy-flip.png")
    im.rotate(90).save(root / "NEUTROPHIL" / "copy-rot90.png")
    lym = sorted((root / "LYMPHOCYTE").iterdir())[0]
    Image.open(lym).convert("RGB").save(root / "LYMPHOCYTE" / "copy.jpg", quality=90)
    return root, neu.name, lym.name


@pytest.fixture(scope="module")
def listing(lisc_copy):
    root, _, _ = lisc_copy
    cfg = DataConfig(data=str(root), split="grouped", groups="near-duplicates", folds=5)
    return cfg, list_labelled(cfg)[1]


def test_near_duplicate_groups_join_the_planted_copies(listing, lisc_copy):
    _, neu, lym = lisc_copy
    rec = listing[1].records.set_index("path")["group"]
    assert rec[f"NEUTROPHIL/{neu}"] == rec["NEUTROPHIL/copy-flip.png"] == \
        rec["NEUTROPHIL/copy-rot90.png"]
    assert rec[f"LYMPHOCYTE/{lym}"] == rec["LYMPHOCYTE/copy.jpg"]
    assert rec[f"NEUTROPHIL/{neu}"] != rec[f"LYMPHOCYTE/{lym}"]
    # Most crops are distinct cells: far more groups than the planted ones would leave.
    assert rec.nunique() > 0.9 * len(rec)


@pytest.mark.parametrize("split", ["grouped", "paper"])
def test_every_image_is_tested_exactly_once(listing, split):
    cfg, lst = listing
    cfg = replace(cfg, split=split)
    tested = []
    for k in range(cfg.folds):
        rec = split_records(replace(cfg, fold=k), lst)
        assert set(rec["split"]) == {"train", "val", "test"}
        test = rec[rec["split"] == "test"]
        tested += list(test["uri"])
        # stratified: every class in every test fold, about a fifth of each class
        per_class = test["label"].value_counts()
        assert set(per_class.index) == set(rec["label"])
        share = per_class / rec["label"].value_counts()
        assert share.between(0.1, 0.3).all(), share.to_dict()
        if split == "grouped":
            assert (rec.groupby("group")["split"].nunique() == 1).all()
    assert sorted(tested) == sorted(lst.records["uri"])


def test_folds_depend_on_the_seed(listing):
    cfg, lst = listing
    a = split_records(cfg, lst)["split"]
    b = split_records(replace(cfg, seed=1), lst)["split"]
    assert (a != b).any()
    assert (split_records(cfg, lst)["split"] == a).all()


@pytest.mark.parametrize("kw, key", [
    ({"folds": 1}, "data.folds"),
    ({"folds": 5, "split": "official"}, "data.folds"),
    ({"folds": 5, "fold": 5}, "data.fold"),
    ({"fold": 1}, "data.fold"),
])
def test_bad_fold_settings_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        DataConfig(**{"split": "grouped", **kw})


def test_pooled_metrics_equal_metrics_over_all_predictions():
    rng = np.random.default_rng(0)
    classes = ["A", "B", "C", "D"]
    y = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300)
    probs[np.arange(300) % 3 == 0, :] = np.eye(4)[y[np.arange(300) % 3 == 0]]  # some right
    folds = np.arange(300) % 5
    per_fold = [compute_metrics(y[folds == k], probs[folds == k], classes) for k in range(5)]
    pooled = pool(per_fold)
    every = compute_metrics(y, probs, classes)
    assert pooled["images"] == 300
    assert pooled["confusion_matrix"] == every["confusion_matrix"]
    assert pooled["accuracy"] == pytest.approx(every["accuracy"])
    assert pooled["macro_f1"] == pytest.approx(every["macro"]["f1"])
    for c in classes:
        for m in ("precision", "recall", "f1"):
            assert pooled["per_class"][c][m] == pytest.approx(every["per_class"][c][m])
    assert pooled["fold_accuracy"] == [m["accuracy"] for m in per_fold]


def test_near_duplicates_is_not_a_file_to_check_before_ray(lisc):
    from wbc_ray.config import load_run_config
    from wbc_ray.workflows import preflight

    cfg = load_run_config(None, {"data": {"data": str(lisc), "split": "grouped",
                                          "groups": "near-duplicates", "folds": 5}})
    preflight.check_train(cfg)  # no "near-duplicates does not exist"
    missing = load_run_config(None, {"data": {"data": str(lisc), "split": "grouped",
                                              "groups": str(lisc / "no-such-groups.csv")}})
    with pytest.raises(Exception, match="no-such-groups.csv"):
        preflight.check_train(missing)
