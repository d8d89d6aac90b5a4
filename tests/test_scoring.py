"""Nightly scoring end to end: real Kaggle / BCCD images, locally and in moto's S3 server.

The module's tests share fixtures and run in file order; the nightly chain (killed run ->
completed run -> incremental night -> rescore) builds on one archive on purpose, because
that is the sequence of nights the job lives through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.cloudpickle
from conftest import REPO, kaggle_images, make_bucket, spread_paper_cnn

import wbc_ray
from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.config import ScoreConfig
from wbc_ray.models.checkpoint import fingerprint
from wbc_ray.models.predictor import Predictor
from wbc_ray.scoring.inputs import read_inputs, sample_id_problem
from wbc_ray.scoring.pipeline import score
from wbc_ray.scoring.plan import actor_resources, predictor_class
from wbc_ray.scoring.publish import State, file_name
from wbc_ray.scoring.publisher import stale_samples

DAY1, DAY2 = "2031-01-01", "2031-01-02"
RANGES = ScoreConfig().reference_ranges
KEY = ["sample_id", "cell_id"]
PROBS = [f"p_{c.lower()}" for c in PAPER_CLASSES]
MIN_CELLS = 10
# The predictor classes below run in Ray workers, which cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def env(s3_server, ray_session):
    """S3 first, so that the Ray workers inherit AWS_ENDPOINT_URL; then Ray."""
    return s3_server


@pytest.fixture(scope="module")
def checkpoint(kaggle, tmp_path_factory) -> str:
    return spread_paper_cnn(kaggle, str(tmp_path_factory.mktemp("ckpt") / "best"))


def cfg(checkpoint: str, input: str, output: str, **kw) -> ScoreConfig:
    kw.setdefault("run_date", DAY1)
    kw.setdefault("min_cells", MIN_CELLS)
    return ScoreConfig(checkpoint=checkpoint, input=input, output=output, **kw)


def read(output: str, table: str) -> pd.DataFrame:
    if output.startswith("s3://"):
        opts = {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
        df = pd.read_parquet(f"{output}/{table}", storage_options=opts)
    else:
        df = pd.read_parquet(f"{output}/{table}")
    df["run_date"] = df["run_date"].astype(str)
    return df


def parquet_files(output: str) -> dict[str, str]:
    """Relative path -> content hash of every Parquet file a reader would see."""
    out = {}
    for p in Path(output).rglob("*.parquet"):
        if not any(part.startswith((".", "_")) for part in p.relative_to(output).parts):
            out[str(p.relative_to(output))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expected_flag(pct: float, low: float, high: float) -> str:
    return "low" if pct < low else "high" if pct > high else "normal"


def check_differential(cells: pd.DataFrame, samples: pd.DataFrame, min_cells: int,
                       empty: set[str] = frozenset()) -> None:
    """The samples table agrees with counts made here from the cells table; the ``empty``
    samples (no cell at all) have a zero row flagged ``no_cells``."""
    counts = cells.groupby("sample_id")["label"].value_counts().unstack(fill_value=0)
    zero = samples[samples["total_cells"] == 0]
    assert set(zero["sample_id"]) == set(empty) and not set(empty) & set(counts.index)
    assert (zero["flags"] == "no_cells").all()
    assert zero[[f"{c.lower()}_pct" for c in PAPER_CLASSES]].isna().all().all()
    assert (zero["insufficient_count"] == (min_cells > 0)).all()
    samples = samples[samples["total_cells"] > 0]
    assert sorted(samples["sample_id"]) == sorted(counts.index)
    for row in samples.itertuples(index=False):
        row = row._asdict()
        n = int(counts.loc[row["sample_id"]].sum())
        assert row["total_cells"] == n
        assert row["insufficient_count"] == (n < min_cells)
        mine = cells[cells.sample_id == row["sample_id"]]
        assert row["needs_review"] == int(mine["needs_review"].sum())
        pcts = [row[f"{c.lower()}_pct"] for c in PAPER_CLASSES]
        assert sum(pcts) == pytest.approx(100.0)
        abnormal = []
        for c in PAPER_CLASSES:
            k = c.lower()
            assert row[f"{k}_count"] == counts.loc[row["sample_id"]].get(c, 0)
            assert row[f"{k}_pct"] == pytest.approx(100.0 * row[f"{k}_count"] / n)
            assert row[f"{k}_ci_low"] - 1e-9 <= row[f"{k}_pct"] <= row[f"{k}_ci_high"] + 1e-9
            assert row[f"{k}_ci_low"] >= 0.0 and row[f"{k}_ci_high"] <= 100.0
            flag = expected_flag(row[f"{k}_pct"], *RANGES[c])
            assert row[f"{k}_flag"] == flag
            if flag != "normal":
                abnormal.append(f"{c} {flag}")
        assert row["flags"] == "; ".join(abnormal)


def check_cells(cells: pd.DataFrame, threshold: float, ckpt: str) -> None:
    """Per-cell invariants computed from the probabilities, not from the implementation."""
    assert not cells.duplicated(KEY).any()
    p = cells[PROBS].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert (cells["label"].to_numpy() == np.array(PAPER_CLASSES)[p.argmax(axis=1)]).all()
    np.testing.assert_allclose(cells["confidence"], p.max(axis=1), rtol=1e-6)
    assert (cells["needs_review"] == (cells["confidence"] < threshold)).all()
    assert set(cells["model"]) == {"paper_cnn"}
    assert set(cells["checkpoint_fingerprint"]) == {fingerprint(ckpt)}
    assert set(cells["package_version"]) == {wbc_ray.__version__}
    assert cells["scored_at"].dt.tz is not None


def truncated_jpeg(src: Path) -> bytes:
    data = src.read_bytes()
    return data[: len(data) // 3]


EMPTY = {"S4", "S5", "S6"}  # the archive's samples without a single cell


@pytest.fixture(scope="module")
def archive(kaggle, tmp_path_factory):
    """3 samples x 20 real images (S1 partly in a subfolder) plus seven unusable files, and
    three samples without a cell: only a corrupt image (S4), only a text file (S5), an empty
    folder (S6, local only: object stores have no empty folders)."""
    root = tmp_path_factory.mktemp("archive") / "slides"
    images = kaggle_images(kaggle, 60)
    for i, src in enumerate(images):
        sample = f"S{i % 3 + 1}"
        folder = root / sample / ("field2" if sample == "S1" and i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / src.name)
    (root / "S1" / "truncated.jpeg").write_bytes(truncated_jpeg(images[0]))
    (root / "S2" / "empty.jpg").write_bytes(b"")
    (root / "S3" / "notes.txt").write_text("not a cell")
    (root / "S3" / "fake.png").write_text("text pretending to be a PNG")
    (root / "README.txt").write_text("an archive readme")
    for sample in sorted(EMPTY):
        (root / sample).mkdir()
    (root / "S4" / "broken.jpeg").write_bytes(truncated_jpeg(images[1]))
    (root / "S5" / "notes.txt").write_text("a slide without cells")
    bad = {("S1", "truncated.jpeg"): "unreadable image", ("S2", "empty.jpg"): "0 bytes",
           ("S3", "notes.txt"): "not an image file", ("S3", "fake.png"): "not an image",
           ("", "README.txt"): "outside a sample folder",
           ("S4", "broken.jpeg"): "unreadable image", ("S5", "notes.txt"): "not an image file"}
    return root, 60, bad


@pytest.fixture(scope="module")
def local_run(env, archive, checkpoint, tmp_path_factory):
    root, _, _ = archive
    out = str(tmp_path_factory.mktemp("scores") / "out")
    summary = score(cfg(checkpoint, str(root), out, review_threshold=0.6), progress=False)
    return summary, out


# ---------------------------------------------------------------- unit checks (no Ray)

@pytest.mark.parametrize("sid, ok", [
    ("S1", True), ("2024-0042 slide A", True), ("..", False), (".", False), ("", False),
    ("  ", False), ("../x", False), ("a/b", False), ("a\\b", False), ("bell\x07", False),
    ("tab\there", False), ("x" * 201, False)])
def test_sample_id_rules(sid, ok):
    assert (sample_id_problem(sid) is None) == ok


def test_file_names_are_safe_and_distinct():
    names = {sid: file_name(sid, "f00d") for sid in ["S1", "S 1", "S/1", "..", "é", "a" * 300]}
    assert len(set(names.values())) == len(names)
    for name in names.values():
        assert "/" not in name and "\\" not in name and not name.startswith((".", "_"))
        assert len(name) < 120 and name.endswith("-f00d.parquet")
    assert file_name("S1", "f00d") == names["S1"]  # deterministic


def test_actor_resources_one_actor_per_cpu_without_gpus():
    assert actor_resources(None, {"CPU": 2.0}) == (2, 1, 0)
    assert actor_resources(4, {"CPU": 2.0}) == (2, 1, 0)  # never more actors than CPUs
    assert actor_resources(1, {"CPU": 2.0}) == (1, 2, 0)
    assert actor_resources(None, {"CPU": 16.0}) == (16, 1, 0)
    assert actor_resources(3, {"CPU": 16.0}) == (3, 5, 0)
    # three nodes of 1 + 2 + 2 CPUs: one actor may not ask for all five CPUs
    assert actor_resources(1, {"CPU": 5.0}, node_cpus=2.0) == (1, 2, 0)
    assert actor_resources(None, {"CPU": 5.0}, node_cpus=2.0) == (5, 1, 0)
    assert actor_resources(None, {"CPU": 32.0, "GPU": 4.0}) == (4, 1, 1)


def test_undecodable_file_names_are_rejected_not_fatal(tmp_path):
    (tmp_path / "S1").mkdir()
    (tmp_path / "S1" / "ok.jpg").write_bytes(b"x")
    with open(os.path.join(os.fsencode(tmp_path), b"S1", b"\xffbad.jpg"), "wb") as f:
        f.write(b"x")
    got = read_inputs(str(tmp_path))
    assert got.records["cell_id"].tolist() == ["ok.jpg"]
    (reason,) = got.rejected["reason"]
    assert reason.startswith("file name is not valid UTF-8")
    got.rejected["cell_id"].iloc[0].encode("utf-8")  # storable in Parquet


def test_stale_differentials_are_found():
    t = pd.Timestamp("2031-01-01", tz="UTC")
    cells = pd.DataFrame({"sample_id": ["A", "A", "B", "C", "D"], "cell_id": list("abcde"),
                          "scored_at": [t, t + pd.Timedelta("1D"), t, t, t]})
    samples = pd.DataFrame({"sample_id": ["A", "B", "D"], "total_cells": [2, 1, 3],
                            "computed_at": [t, t, t]})
    state = State(cells, cells.iloc[:0], samples, 0, frozenset())
    # A: a cell rescored after its differential; C: no differential; D: wrong total.
    assert stale_samples(state) == {"A", "C", "D"}


def test_job_script_calls_score_with_the_cli_config(monkeypatch):
    """jobs/nightly_score.py is `wbc-ray score`: same options, same library call."""
    import runpy

    seen = {}
    monkeypatch.setattr("wbc_ray.workflows.preflight.check_score", lambda cfg: cfg)
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    monkeypatch.setattr("wbc_ray.scoring.pipeline.score",
                        lambda cfg, **kw: seen.update(cfg=cfg, **kw) or {"status": "ok"})
    monkeypatch.setattr(sys, "argv", [
        "nightly_score.py", "--checkpoint", "s3://m/best", "--input", "s3://a", "--output",
        "s3://o", "--rescore", "--review-threshold", "0.7", "--min-cells", "50", "--run-date",
        DAY1, "--runtime", "onnx", "--no-progress"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "jobs" / "nightly_score.py"), run_name="__main__")
    assert done.value.code in (0, None)
    assert seen["cfg"] == ScoreConfig(checkpoint="s3://m/best", input="s3://a", output="s3://o",
                                      rescore=True, review_threshold=0.7, min_cells=50,
                                      run_date=DAY1, runtime="onnx")
    assert seen["progress"] is False


def test_runtime_picks_the_predictor_class():
    from wbc_ray.models.onnx_predictor import OnnxPredictor

    assert predictor_class("torch") is Predictor
    assert predictor_class("onnx") is OnnxPredictor
    with pytest.raises(ValueError, match="tflite"):
        predictor_class("tflite")


def test_missing_checkpoint_or_input_fails_before_ray(archive, checkpoint, tmp_path):
    import ray

    root, _, _ = archive
    was_up = ray.is_initialized()
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        score(cfg(missing, str(root), str(tmp_path / "out")), progress=False)
    with pytest.raises(FileNotFoundError, match="no-such-archive"):
        score(cfg(checkpoint, str(tmp_path / "no-such-archive"), str(tmp_path / "out")),
              progress=False)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(checkpoint, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no-weights"):
        score(cfg(str(no_weights), str(root), str(tmp_path / "out")), progress=False)
    assert ray.is_initialized() == was_up  # nothing started Ray
    assert not (tmp_path / "out").exists()  # and nothing was written


# ---------------------------------------------------------------- local and S3 archives

class SameProcessPredictor(Predictor):
    """Quarantines every row that this model actor's process did not decode itself.

    Tags the decode's output with its pid (in this process only: the patch is made in the
    actor); a row decoded elsewhere arrives untagged or with another pid."""

    REASON = "decoded outside the model actor"

    def __init__(self, checkpoint: str, **kwargs):
        super().__init__(checkpoint, **kwargs)
        import wbc_ray.data.dataset as dataset

        class Tagged(dataset.DecodeBatch):
            def __call__(self, batch):
                return super().__call__(batch).assign(decode_pid=os.getpid())

        dataset.DecodeBatch = Tagged

    def __call__(self, batch):
        pid = batch.pop("decode_pid", None)
        out = super().__call__(batch)
        same = np.zeros(len(out["error"]), bool) if pid is None else pid == os.getpid()
        out["error"] = np.where(same, out["error"], self.REASON)
        return out


def test_cpu_decode_is_fused_into_the_model_actors(env, archive, checkpoint, tmp_path):
    """The CPU layout's speed rests on Ray Data fusing decode into each model actor
    (docs/PERFORMANCE.md): the actor's own process decodes the images it predicts, rather
    than decode tasks waiting for CPUs the actors hold."""
    root, n_images, bad = archive
    out = str(tmp_path / "out")
    summary = score(cfg(checkpoint, str(root), out), SameProcessPredictor, progress=False)
    assert summary["counts"]["cells_written"] == n_images, read(out, "quarantine")["reason"]
    assert SameProcessPredictor.REASON not in set(read(out, "quarantine")["reason"])


def test_local_archive_reconciles(local_run, archive, checkpoint):
    summary, out = local_run
    root, n_images, bad = archive
    counts = summary["counts"]
    assert summary["status"] == "ok" and summary["reconciliation"]["ok"]
    assert summary["input_kind"] == "folder"
    assert counts["inputs_seen"] == n_images + len(bad)
    assert counts["cells_written"] == n_images and counts["quarantined"] == len(bad)
    assert Path(summary["summary_uri"]).parent == Path(out) / "runs"

    cells = read(out, "cells")
    on_disk = {str(p) for p in root.rglob("*.jpeg")} - {
        str(root / "S1" / "truncated.jpeg"), str(root / "S4" / "broken.jpeg")}
    assert set(cells["uri"]) == on_disk and len(cells) == n_images
    assert set(cells["run_date"]) == {DAY1}
    assert (cells.groupby("sample_id").size() == n_images // 3).all()
    assert cells["cell_id"].str.startswith("field2/").sum() == 10  # nested images count
    check_cells(cells, 0.6, checkpoint)
    assert cells["label"].nunique() >= 2, "fixture model should give varied labels"
    assert cells["needs_review"].any() and not cells["needs_review"].all()

    check_differential(cells, read(out, "samples"), MIN_CELLS, EMPTY)
    assert counts["samples_seen"] == 3 + len(EMPTY)
    assert counts["samples_without_cells"] == len(EMPTY)
    assert counts["samples_written"] == 3 + len(EMPTY)

    q = read(out, "quarantine")
    assert len(q) == len(bad)
    reasons = dict(zip(zip(q["sample_id"], q["cell_id"], strict=True), q["reason"], strict=True))
    assert set(reasons) == set(bad)
    for key, fragment in bad.items():
        assert fragment in reasons[key], (key, reasons[key])


def test_s3_archive_matches_local(env, archive, checkpoint, local_run):
    _, local_out = local_run
    root, n_images, bad = archive
    fs = make_bucket(env, "wbc")
    fs.put(str(root), "wbc/slides", recursive=True)
    fs.put(checkpoint, "wbc/models/best", recursive=True)
    out = "s3://wbc/scores"
    summary = score(cfg("s3://wbc/models/best", "s3://wbc/slides", out, review_threshold=0.6),
                    progress=False)
    assert summary["reconciliation"]["ok"]
    assert summary["counts"]["cells_written"] == n_images
    assert summary["counts"]["quarantined"] == len(bad)
    assert fs.exists(summary["summary_uri"])

    s3_cells, local_cells = read(out, "cells"), read(local_out, "cells")
    assert s3_cells["uri"].str.startswith("s3://wbc/slides/").all()
    both = s3_cells.merge(local_cells, on=KEY, suffixes=("_s3", "_local"), validate="1:1")
    assert len(both) == n_images
    assert (both["label_s3"] == both["label_local"]).all()
    for p in PROBS:
        np.testing.assert_allclose(both[f"{p}_s3"], both[f"{p}_local"], atol=1e-3)
    assert (both["checkpoint_fingerprint_s3"] == both["checkpoint_fingerprint_local"]).all()
    check_differential(s3_cells, read(out, "samples"), MIN_CELLS, EMPTY - {"S6"})

    cols = ["sample_id", "total_cells", *[f"{c.lower()}_count" for c in PAPER_CLASSES], "flags"]
    s3_samples = read(out, "samples")[cols].sort_values("sample_id").reset_index(drop=True)
    local_samples = read(local_out, "samples").query("sample_id != 'S6'")[cols] \
        .sort_values("sample_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(s3_samples, local_samples)
    assert set(zip(read(out, "quarantine")["sample_id"], read(out, "quarantine")["cell_id"],
                   strict=True)) == set(bad)


def test_rerun_same_night_is_idempotent(local_run, archive, checkpoint):
    summary, out = local_run
    root, n_images, bad = archive
    before = parquet_files(out)
    again = score(cfg(checkpoint, str(root), out, review_threshold=0.6), progress=False)
    assert again["reconciliation"]["ok"]
    assert again["counts"]["cells_written"] == 0 and again["counts"]["quarantined"] == 0
    assert again["counts"]["already_scored"] == n_images
    assert again["counts"]["already_quarantined"] == len(bad)
    assert again["counts"]["samples_written"] == 0  # the no_cells rows are not repeated
    assert again["counts"]["samples_without_cells"] == len(EMPTY)
    assert parquet_files(out) == before  # nothing rewritten, nothing added
    assert len(read(out, "cells")) == n_images and len(read(out, "quarantine")) == len(bad)


# ---------------------------------------------------------------- a night killed midway

@pytest.fixture(scope="module")
def nightly(kaggle, tmp_path_factory):
    """3 samples x 8 images + one corrupt file; images held back for a later night."""
    root = tmp_path_factory.mktemp("nightly") / "archive"
    images = kaggle_images(kaggle, 31, offset=5)
    for i, src in enumerate(images[:24]):
        (root / f"N{i % 3 + 1}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"N{i % 3 + 1}" / src.name)
    (root / "N2" / "broken.jpeg").write_bytes(truncated_jpeg(images[0]))
    out = root / "_scores"  # inside the archive: listing must skip the job's own outputs
    return root, str(out), images[24:]


# A scoring driver that publishes one sample at a time, then waits: time to kill it between
# two samples. argv: the ScoreConfig as JSON.
SLOW_DRIVER = """
import json, sys, time
from wbc_ray.config import ScoreConfig
from wbc_ray.ray_session import init_ray
from wbc_ray.scoring.pipeline import PublishHooks, score
init_ray()
score(ScoreConfig(**json.loads(sys.argv[1])), progress=False,
      hooks=PublishHooks(threads=1, after_sample=lambda sample_id: time.sleep(5)))
"""


def test_killed_run_loses_nothing_and_next_run_completes(env, nightly, checkpoint):
    root, out, _ = nightly
    samples_dir = Path(out) / "samples" / f"run_date={DAY1}"
    args = {"checkpoint": checkpoint, "input": str(root), "output": out, "run_date": DAY1,
            "min_cells": MIN_CELLS}
    job = [sys.executable, "-c", SLOW_DRIVER, json.dumps(args)]
    env_vars = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    log = root.parent / "job.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(job, cwd=REPO, env=env_vars, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        # part-*: a published file, not the hidden temp file of one being written
        while not list(samples_dir.glob("part-*.parquet")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no sample published in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and the Ray it started
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    published = read(out, "cells")
    done_samples = set(published["sample_id"])
    assert 1 <= len(done_samples) < 3, "the kill should land between samples"
    for sid in done_samples:  # a published sample is whole: every one of its good images
        assert len(published[published.sample_id == sid]) == 8
    assert set(read(out, "samples")["sample_id"]) == done_samples

    summary = score(cfg(checkpoint, str(root), out), progress=False)
    assert summary["reconciliation"]["ok"]
    c = summary["counts"]
    assert c["inputs_seen"] == 25
    assert c["already_scored"] == len(published)
    assert c["cells_written"] == 24 - len(published)
    cells = read(out, "cells")
    assert len(cells) == 24 and not cells.duplicated(KEY).any()
    assert read(out, "quarantine")["cell_id"].tolist() == ["broken.jpeg"]
    check_differential(cells, read(out, "samples"), MIN_CELLS)


def test_next_night_scores_only_new_images(env, nightly, checkpoint):
    root, out, spare = nightly
    for src in spare[:3]:
        shutil.copy(src, root / "N2" / src.name)
    (root / "N4").mkdir()
    for src in spare[3:7]:
        shutil.copy(src, root / "N4" / src.name)
    summary = score(cfg(checkpoint, str(root), out, run_date=DAY2), progress=False)
    c = summary["counts"]
    assert summary["reconciliation"]["ok"]
    assert c["cells_written"] == 7 and c["already_scored"] == 24
    assert c["already_quarantined"] == 1 and c["quarantined"] == 0

    cells = read(out, "cells")
    night2 = cells[cells.run_date == DAY2]
    assert sorted(night2["cell_id"]) == sorted(p.name for p in spare[:7])
    assert len(cells) == 31 and not cells.duplicated(KEY).any()
    samples = read(out, "samples")
    latest = samples[samples.run_date == DAY2].set_index("sample_id")
    assert sorted(latest.index) == ["N2", "N4"]  # only the samples that changed
    assert latest.loc["N2", "total_cells"] == 8 + 3  # recomputed from every N2 cell
    assert latest.loc["N4", "total_cells"] == 4
    assert (samples[samples.run_date == DAY1].set_index("sample_id").loc["N2", "total_cells"]
            == 8)  # the first night's row is history, not overwritten


def test_rescore_replaces_within_the_night(env, nightly, checkpoint):
    root, out, _ = nightly
    summary = score(cfg(checkpoint, str(root), out, run_date=DAY2, rescore=True), progress=False)
    assert summary["reconciliation"]["ok"]
    assert summary["counts"]["cells_written"] == 31 and summary["counts"]["quarantined"] == 1
    cells = read(out, "cells")
    night2 = cells[cells.run_date == DAY2]
    assert len(night2) == 31 and not night2.duplicated(KEY).any()
    assert len(cells[cells.run_date == DAY1]) == 24  # earlier nights keep their history
    assert sorted(read(out, "samples").query("run_date == @DAY2")["sample_id"]) == [
        "N1", "N2", "N3", "N4"]
    q = read(out, "quarantine")
    assert len(q[q.run_date == DAY2]) == 1


def test_lost_differential_is_republished(env, nightly, checkpoint):
    """A run dying between a sample's cells and its differential: the next run repairs it."""
    root, out, _ = nightly
    lost = next(Path(out, "samples", f"run_date={DAY2}").glob("part-N3-*.parquet"))
    lost.unlink()
    summary = score(cfg(checkpoint, str(root), out, run_date=DAY2), progress=False)
    assert summary["reconciliation"]["ok"]
    c = summary["counts"]
    assert (c["cells_written"], c["quarantined"], c["samples_written"]) == (0, 0, 1)
    samples = read(out, "samples").query("run_date == @DAY2").set_index("sample_id")
    cells = read(out, "cells").query("run_date == @DAY2")
    assert samples.loc["N3", "total_cells"] == (cells.sample_id == "N3").sum() == 8


# ---------------------------------------------------------------- Pascal-VOC slide fields

def wbc_boxes(xml: Path) -> list[tuple[float, ...]]:
    root = ET.parse(xml).getroot()
    return [tuple(float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            for o in root.iter("object") if o.findtext("name") == "WBC"]


def test_voc_fields_one_row_per_wbc_box(env, kaggle, checkpoint, tmp_path):
    src = kaggle / "originals"
    root = tmp_path / "fields"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    # 00010: two WBC boxes; 00133: none; 00096: no XML at all.
    stems = [f"BloodImage_{i:05d}" for i in (0, 1, 2, 3, 4, 10, 96, 133)]
    for stem in stems:
        shutil.copy(src / "JPEGImages" / f"{stem}.jpg", root / "JPEGImages")
        if (src / "Annotations" / f"{stem}.xml").exists():
            shutil.copy(src / "Annotations" / f"{stem}.xml", root / "Annotations")
    shutil.copy(src / "JPEGImages" / "BloodImage_00005.jpg", root / "JPEGImages" / "broken.jpg")
    (root / "Annotations" / "broken.xml").write_text("<annotation><object><name>WBC</name>")
    (root / "slideA").mkdir()  # the other layout: a sample folder, XML beside each field
    shutil.copy(src / "JPEGImages" / "BloodImage_00006.jpg", root / "slideA" / "field1.jpg")
    shutil.copy(src / "Annotations" / "BloodImage_00006.xml", root / "slideA" / "field1.xml")

    expected = {}
    for xml in sorted(root.rglob("*.xml")):
        try:
            boxes = wbc_boxes(xml)
        except ET.ParseError:
            continue
        sample = "slideA" if xml.parent.name == "slideA" else xml.stem
        for k, box in enumerate(boxes):
            expected[(sample, f"{xml.stem}#{k}")] = box
    assert len(expected) == 8  # 5 single boxes + 2 (00010) + 1 (slideA), 0 for 00133

    out = str(tmp_path / "out")
    summary = score(cfg(checkpoint, str(root), out, min_cells=1), progress=False)
    assert summary["input_kind"] == "voc" and summary["reconciliation"]["ok"]
    cells = read(out, "cells")
    got = {(r.sample_id, r.cell_id): (r.xmin, r.ymin, r.xmax, r.ymax)
           for r in cells.itertuples()}
    assert got == expected
    check_cells(cells, ScoreConfig().review_threshold, checkpoint)

    q = read(out, "quarantine").set_index("sample_id")["reason"]
    assert set(q.index) == {"BloodImage_00096", "BloodImage_00133", "broken"}
    assert "no Pascal-VOC annotation" in q["BloodImage_00096"]
    assert "no WBC box" in q["BloodImage_00133"]
    assert "malformed annotation XML" in q["broken"]
    assert summary["counts"]["inputs_seen"] == len(expected) + 3
    check_differential(cells, read(out, "samples"), 1, set(q.index))  # fields without a cell


# ---------------------------------------------------------------- manifests, hostile ids

def test_manifest_boxes_and_hostile_sample_ids(env, kaggle, checkpoint, tmp_path):
    field = kaggle / "originals" / "JPEGImages" / "BloodImage_00010.jpg"
    (b1, b2) = wbc_boxes(kaggle / "originals" / "Annotations" / "BloodImage_00010.xml")
    rows = [("M1", str(field), *b1), ("M1", str(field), *b2),
            ("M1", str(field), *b1),  # a repeated row: same cell, kept once
            ("M1", str(field), 5000.0, 5000.0, 5100.0, 5100.0),  # box outside the field
            ("..", str(field), *b1), ("../../escape", str(field), *b1),
            ("a\\b", str(field), *b1), ("bell\x07", str(field), *b1), ("", str(field), *b1)]
    manifest = pd.DataFrame(rows, columns=["sample_id", "uri", "xmin", "ymin", "xmax", "ymax"])
    work = tmp_path / "job"
    work.mkdir()
    manifest.to_parquet(work / "cells.parquet")
    out = work / "out"
    summary = score(cfg(checkpoint, str(work / "cells.parquet"), str(out), min_cells=1),
                    progress=False)
    assert summary["input_kind"] == "manifest" and summary["reconciliation"]["ok"]
    assert summary["counts"]["duplicate_rows_ignored"] == 1
    assert summary["counts"]["inputs_seen"] == len(rows) - 1

    cells = read(str(out), "cells")
    assert len(cells) == 2 and set(cells["sample_id"]) == {"M1"}
    assert sorted(zip(cells.xmin, cells.ymax, strict=True)) == sorted(
        [(b1[0], b1[3]), (b2[0], b2[3])])
    q = read(str(out), "quarantine").set_index("sample_id")["reason"]
    assert "escape the output prefix" in q[".."]
    assert "path separator" in q["../../escape"] and "path separator" in q["a\\b"]
    assert "control characters" in q["bell\x07"] and "empty sample_id" in q[""]
    assert "crop box" in q["M1"]
    # Nothing was written outside the output prefix.
    assert sorted(p.name for p in work.iterdir()) == ["cells.parquet", "out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve())


# ---------------------------------------------------------------- reconciliation can fail

class LosingPredictor(Predictor):
    """Drops the first row of every batch, as a broken model runtime might."""

    def __call__(self, batch):
        return {k: v[1:] for k, v in super().__call__(batch).items()}


def test_lost_rows_fail_reconciliation(env, kaggle, checkpoint, tmp_path):
    root = tmp_path / "archive" / "R1"
    root.mkdir(parents=True)
    for src in kaggle_images(kaggle, 3, offset=11):
        shutil.copy(src, root / src.name)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="does not reconcile"):
        score(cfg(checkpoint, str(root.parent), str(out)), LosingPredictor, progress=False)
    (summary_file,) = (out / "runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "reconciliation_failed"
    check = summary["reconciliation"]
    # R1 never became whole, so nothing of it was published
    assert (check["inputs_seen"], check["accounted"], check["missing_in_outputs"]) == (3, 0, 3)
    assert (check["rows_sent"], check["rows_received"]) == (3, 2)
    assert check["examples_samples_without_row"] == ["R1"]


def test_summary_records_the_resolved_config(local_run, checkpoint):
    summary, out = local_run
    (written,) = [json.loads(p.read_text()) for p in (Path(out) / "runs").glob("*.json")
                  if json.loads(p.read_text())["started_at"] == summary["started_at"]]
    config = written["config"]
    assert config["run_date"] == DAY1 and config["review_threshold"] == 0.6
    assert config["checkpoint"] == checkpoint and config["runtime"] == "torch"
    assert ScoreConfig(**{**config, "reference_ranges": {
        k: tuple(v) for k, v in config["reference_ranges"].items()}}).min_cells == MIN_CELLS
