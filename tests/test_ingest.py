"""Ray Data ingestion: local vs a real S3 server, bad inputs quarantined, cache reuse."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from wbc_ray.config import DataConfig
from wbc_ray.data.prepare import prepare

PER_CLASS = 8


@pytest.fixture(scope="module")
def archive(kaggle, tmp_path_factory):
    """A small real subset in the Kaggle layout, plus every kind of bad input."""
    root = tmp_path_factory.mktemp("ingest") / "images"
    for cls_dir in sorted((kaggle / "images" / "TRAIN").iterdir()):
        dest = root / "TRAIN" / cls_dir.name.lower()  # lower-case folder: normalised
        dest.mkdir(parents=True)
        for f in sorted(cls_dir.iterdir())[:PER_CLASS]:
            shutil.copy(f, dest / f.name)
    bad = root / "TRAIN" / "neutrophil"
    good = next(iter(sorted(bad.iterdir()))).read_bytes()
    (bad / "zero.jpeg").write_bytes(b"")
    (bad / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (bad / "notes.jpeg").write_text("not a picture")
    from PIL import Image

    Image.new("L", (5000, 5000)).save(bad / "bomb.png")  # 25 Mpx in a tiny file
    (root / "TRAIN" / "platelet").mkdir()
    shutil.copy(bad / "zero.jpeg", root / "TRAIN" / "platelet" / "p.jpeg")
    return root


BAD = {"zero.jpeg": "empty", "truncated.jpeg": "unreadable", "notes.jpeg": "not an image",
       "bomb.png": "too large", "p.jpeg": "unknown class folder"}


def _cfg(data: str, **kw) -> DataConfig:
    return DataConfig(data=data, split="paper", max_pixels=20_000_000, **kw)


@pytest.fixture(scope="module")
def s3_archive(s3_server, archive):
    from conftest import make_bucket

    fs = make_bucket(s3_server, "slides")
    fs.put(str(archive), "slides/images", recursive=True)
    return "s3://slides/images"


@pytest.fixture(scope="module")
def local_prepared(s3_server, ray_session, archive):  # S3 env first: Ray workers inherit it
    return prepare(_cfg(str(archive)), 100)


def test_bad_inputs_quarantined_and_totals_reconcile(local_prepared):
    p = local_prepared
    reasons = {u.rsplit("/", 1)[-1]: r for u, r in zip(p.quarantine["uri"], p.quarantine["reason"],
                                                       strict=True)}
    assert set(reasons) == set(BAD)
    for name, expected in BAD.items():
        assert expected in reasons[name], (name, reasons[name])
    assert p.counts["seen"] == 4 * PER_CLASS + len(BAD)
    assert p.counts["used"] == 4 * PER_CLASS
    assert p.counts["used"] + p.counts["quarantined"] + p.counts["unused"] == p.counts["seen"]


def test_decoded_rows_are_model_inputs(local_prepared):
    rows = pd.concat([ds.to_pandas() for ds in local_prepared.datasets.values()])
    assert len(rows) == 4 * PER_CLASS
    img = np.stack(rows["image"].to_numpy())
    assert img.shape[1:] == (100, 100, 3) and img.dtype == np.uint8
    assert img.reshape(len(img), -1).std(1).min() > 5  # no blank (failed) images slipped in
    assert sorted(rows["label_idx"].value_counts().tolist()) == [PER_CLASS] * 4


def test_s3_reads_give_the_same_rows_as_local(s3_archive, local_prepared):
    remote = prepare(_cfg(s3_archive), 100)
    assert remote.counts == local_prepared.counts

    def table(p):
        df = pd.concat([ds.to_pandas().assign(split=s) for s, ds in p.datasets.items()])
        df["digest"] = [hash(np.asarray(i).tobytes()) for i in df["image"]]
        return sorted(zip(df["split"], df["label_idx"], df["digest"], strict=True))

    assert table(remote) == table(local_prepared)
    assert sorted(u.rsplit("/", 1)[-1] for u in remote.quarantine["uri"]) == sorted(BAD)


def test_decode_cache_on_s3_is_reused(s3_archive, s3_server, local_prepared):
    from conftest import make_bucket

    fs = make_bucket(s3_server, "decoded-cache")
    first = prepare(_cfg(s3_archive, cache="s3://decoded-cache/decoded"), 100)
    shards = fs.find("decoded-cache/decoded")
    assert any(s.endswith(".parquet") for s in shards) and any("_COMPLETE" in s for s in shards)
    second = prepare(_cfg(s3_archive, cache="s3://decoded-cache/decoded", seed=1), 100)
    assert fs.find("decoded-cache/decoded") == shards  # read, not rewritten
    assert second.counts["used"] == first.counts["used"]


def test_missing_bucket_fails_fast_naming_uri(s3_server, ray_session):
    with pytest.raises((FileNotFoundError, ValueError), match="s3://no-such-bucket/x"):
        prepare(_cfg("s3://no-such-bucket/x"), 100)


def test_training_rows_are_mixed_across_classes(ray_session, tmp_path):
    # Regression: listings come sorted by class folder; without a shuffle before decoding,
    # training batches held one class at a time and the model collapsed to one class.
    from wbc_ray.data.synthetic import make_dataset

    root = make_dataset(str(tmp_path / "syn"), per_class=60)
    p = prepare(DataConfig(data=root, split="paper"), 32)
    first = p.datasets["train"].take_batch(64)["label_idx"]
    assert len(set(first.tolist())) == 4
