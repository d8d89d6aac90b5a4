"""Any file name the filesystem can hold is used or quarantined with its real path."""

from __future__ import annotations

import os
import shutil

import pytest

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.data.ingest import NOT_UTF8, printable
from wbc_ray.data.sources import list_inputs
from wbc_ray.scoring.inputs import read_inputs


@pytest.fixture
def jpeg(kaggle):
    return next((kaggle / "images" / "TEST" / "EOSINOPHIL").glob("*.jpeg"))


def test_non_utf8_name_in_a_training_folder_is_quarantined_not_fatal(tmp_path, jpeg):
    root = tmp_path / "data"
    (root / "EOSINOPHIL").mkdir(parents=True)
    shutil.copy(jpeg, root / "EOSINOPHIL" / "ok.jpeg")
    bad = os.fsencode(str(root / "EOSINOPHIL")) + b"/cell-\xff.jpeg"
    shutil.copy(jpeg, bad)
    listing = list_inputs(str(root), PAPER_CLASSES)
    assert list(listing.records["path"]) == ["EOSINOPHIL/ok.jpeg"]
    (row,) = listing.rejected.to_dict("records")
    assert row["reason"] == NOT_UTF8
    assert row["uri"].endswith("cell-\\xff.jpeg")  # the real bytes, escaped, not U+FFFD
    assert printable(os.fsdecode(bad)) == row["uri"]


def test_scoring_names_the_real_sample_of_a_backslash_folder_and_keeps_empty_ones(tmp_path,
                                                                                 jpeg):
    root = tmp_path / "archive"
    for sample in ("S1", "lab\\slide 7", "EMPTY"):
        (root / sample).mkdir(parents=True)
    shutil.copy(jpeg, root / "S1" / "a.jpeg")
    shutil.copy(jpeg, root / "lab\\slide 7" / "b.jpeg")
    inputs = read_inputs(str(root))
    assert list(inputs.records["sample_id"]) == ["S1"]
    (rej,) = inputs.rejected.to_dict("records")
    assert rej["sample_id"] == "lab\\slide 7" and "path separator" in rej["reason"]
    assert "EMPTY" in inputs.sample_ids and "S1" in inputs.sample_ids
