"""Fuzz-style inputs (issue 18): one scoring archive and one evaluate folder that mix every kind
of bad input we know of with good real Kaggle images, run through the real CLI.

Reconciliation is checked against a listing made here (``os.walk`` over bytes, so every name
the filesystem holds is counted, symlinks included): every file is exactly one cell row (or
one evaluated image) or one quarantine row, and each quarantine reason names its kind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.cli import app
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, save_checkpoint

runner = CliRunner()
NON_UTF8 = b"cell-\xff\xfe.jpeg"  # not decodable as UTF-8: Latin-1 bytes from an old scanner


def png_header(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


# Unusual but valid images (they must be scored): name -> bytes made from one real cell.
GOOD_KINDS = {
    "grayscale.jpeg": lambda rgb, data: encoded(rgb.convert("L"), "JPEG"),
    "rgba.png": lambda rgb, data: encoded(rgb.convert("RGBA"), "PNG"),
    "sixteen-bit.tif": lambda rgb, data: encoded(Image.fromarray(
        np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "TIFF"),
    "cmyk.jpeg": lambda rgb, data: encoded(rgb.convert("CMYK"), "JPEG"),
    "cell with spaces.jpeg": lambda rgb, data: data,
    "zellé ü 白血球.jpeg": lambda rgb, data: data,
    "-leading-dash.jpeg": lambda rgb, data: data,
}


def good_kinds(real: Path) -> dict[str, bytes]:
    rgb, data = Image.open(real).convert("RGB"), real.read_bytes()
    return {name: make(rgb, data) for name, make in GOOD_KINDS.items()}


def bad_kinds(real: Path) -> dict[str, bytes]:
    data = real.read_bytes()
    return {
        "zero.jpeg": b"",
        "truncated.jpeg": data[: len(data) // 3],
        "text.jpeg": b"this is not a picture\n",
        "bomb-huge.png": png_header(60_000, 60_000),  # over PIL's hard limit
        "bomb-warn.png": png_header(10_000, 10_000),  # over PIL's warning limit
        "too-large.png": png_header(7_000, 7_000),  # over our MAX_PIXELS only
        "._foo.jpg": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",  # AppleDouble
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 64,
    }


# The reason fragment of every bad kind, per command: a class folder's listing calls dot files
# "hidden"; a scoring archive judges them by their extension and content.
SCORE_REASONS = {
    "zero.jpeg": "empty file (0 bytes)", "truncated.jpeg": "unreadable image",
    "text.jpeg": "not an image", "bomb-huge.png": "decompression bomb",
    "bomb-warn.png": "decompression bomb", "too-large.png": "image too large",
    "._foo.jpg": "not an image", ".DS_Store": "not an image file",
    "dangling.jpeg": "file not found", "loop.jpeg": "symbolic links",
    NON_UTF8.decode("utf-8", "backslashreplace"): "not valid UTF-8",
}
EVALUATE_REASONS = {**SCORE_REASONS, "._foo.jpg": "hidden file", ".DS_Store": "hidden file"}


def add_bad_inputs(folder: Path, real: Path, good_bytes: bytes) -> None:
    """Every bad kind, a dangling and a looping symlink, and a good image whose name is not
    UTF-8 (it can only be quarantined: Parquet strings are UTF-8)."""
    for name, data in bad_kinds(real).items():
        (folder / name).write_bytes(data)
    os.symlink("/nonexistent/cell.jpeg", folder / "dangling.jpeg")
    os.symlink("loop.jpeg", folder / "loop.jpeg")
    with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as f:
        f.write(good_bytes)


def on_disk(root: Path) -> set[str]:
    """Every file (and symlink) under ``root``, listed as bytes and shown with ``\\x`` escapes."""
    out = set()
    for folder, _, files in os.walk(os.fsencode(root)):
        out |= {os.path.join(folder, f).decode("utf-8", "backslashreplace") for f in files}
    return out


def real_images(kaggle: Path, per_class: int) -> list[Path]:
    return [p for c in PAPER_CLASSES
            for p in sorted((kaggle / "images" / "TEST" / c).glob("*.jpeg"))[:per_class]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """An untrained paper CNN: reconciliation does not depend on what the model predicts."""
    model = build_model("paper_cnn", num_classes=len(PAPER_CLASSES), hidden=[8])
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES, {"hidden": [8]})
    return save_checkpoint(str(tmp_path_factory.mktemp("fuzz-ckpt") / "best"), model, meta)


@pytest.fixture(scope="module")
def archive(kaggle, tmp_path_factory):
    """``GOOD``: real cells (one in a subfolder) and the unusual valid kinds; ``BAD``: every
    bad kind; ``Slide 7 é``: real cells; ``EMPTY``: nothing at all; ``S\\xfe``: a sample
    folder whose own name is not UTF-8."""
    root = tmp_path_factory.mktemp("fuzz") / "archive"
    reals = real_images(kaggle, 3)
    (root / "GOOD" / "field2").mkdir(parents=True)
    for i, src in enumerate(reals[:6]):
        shutil.copy(src, root / "GOOD" / ("field2" if i % 2 else "") / src.name)
    for name, data in good_kinds(reals[0]).items():
        (root / "GOOD" / name).write_bytes(data)
    (root / "BAD").mkdir()
    add_bad_inputs(root / "BAD", reals[0], reals[1].read_bytes())
    (root / "Slide 7 é").mkdir()
    for src in reals[6:9]:
        shutil.copy(src, root / "Slide 7 é" / src.name)
    (root / "EMPTY").mkdir()
    odd_sample = os.path.join(os.fsencode(root), b"S\xfe")
    os.mkdir(odd_sample)
    shutil.copy(reals[9], os.path.join(odd_sample, b"a.jpeg"))
    return root


@pytest.fixture(scope="module")
def scored(ray_session, archive, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-out") / "scores"
    res = runner.invoke(app, ["score", "--checkpoint", checkpoint, "--input", str(archive),
                              "--output", str(out), "--run-date", "2031-01-01", "--min-cells",
                              "5", "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    tables = {t: pd.read_parquet(out / t) for t in ("cells", "quarantine", "samples")}
    return json.loads(res.stdout), tables


def test_scoring_reconciles_every_bad_kind(scored, archive):
    summary, t = scored
    cells, quarantine = t["cells"], t["quarantine"]
    files = on_disk(archive)
    assert summary["status"] == "ok" and summary["reconciliation"]["ok"], summary
    assert summary["counts"]["inputs_seen"] == len(files)
    # every file exactly once: a cell row or a quarantine row
    assert not cells["uri"].duplicated().any() and not quarantine["uri"].duplicated().any()
    assert set(cells["uri"]).isdisjoint(quarantine["uri"])
    assert set(cells["uri"]) | set(quarantine["uri"]) == files
    # the good and the unusual-but-valid images are all scored, by their real names
    good = {p for p in files if "/GOOD/" in p or "/Slide 7 é/" in p}
    assert set(cells["uri"]) == good
    assert set(GOOD_KINDS) <= set(cells["cell_id"])
    assert cells["cell_id"].str.startswith("field2/").sum() == 3  # nested fields count
    # every bad kind is quarantined with a reason that names it
    bad = quarantine[quarantine["sample_id"] == "BAD"]
    reasons = dict(zip(bad["cell_id"], bad["reason"], strict=True))
    assert set(reasons) == set(SCORE_REASONS)
    for name, fragment in SCORE_REASONS.items():
        assert fragment in reasons[name], (name, reasons[name])


def test_scoring_keeps_non_utf8_names_as_their_real_bytes(scored, archive):
    _, t = scored
    q = t["quarantine"].set_index("uri")
    bad_file = (os.path.join(os.fsencode(archive / "BAD"), NON_UTF8)
                .decode("utf-8", "backslashreplace"))
    assert bad_file.endswith("/BAD/cell-\\xff\\xfe.jpeg")
    assert "not valid UTF-8" in q.loc[bad_file, "reason"]
    odd_sample = str(archive) + "/S\\xfe/a.jpeg"
    assert q.loc[odd_sample, "sample_id"] == "S\\xfe"
    assert "not valid UTF-8" in q.loc[odd_sample, "reason"]
    assert "\ufffd" not in "".join(q.index)  # never the replacement character


def test_scoring_reports_samples_without_cells(scored):
    summary, t = scored
    samples = t["samples"].set_index("sample_id")
    assert set(samples.index) == {"GOOD", "BAD", "Slide 7 é", "EMPTY"}
    for sample in ("EMPTY", "BAD"):  # no file at all / only unusable files
        assert samples.loc[sample, "total_cells"] == 0
        assert samples.loc[sample, "flags"] == "no_cells"
        assert bool(samples.loc[sample, "insufficient_count"])
    assert samples.loc["GOOD", "total_cells"] == 13 and samples.loc["Slide 7 é",
                                                                      "total_cells"] == 3
    assert summary["counts"]["samples_without_cells"] == 2


@pytest.fixture(scope="module")
def evaluated(ray_session, kaggle, checkpoint, tmp_path_factory):
    """``<CLASS>/*`` with three real images per class, the valid kinds under LYMPHOCYTE, the
    bad kinds under MONOCYTE, an empty BASOPHIL folder and a file outside any class."""
    root = tmp_path_factory.mktemp("fuzz-eval") / "data"
    reals = real_images(kaggle, 4)
    for c in PAPER_CLASSES:
        (root / c).mkdir(parents=True)
        for src in [p for p in reals if p.parent.name == c][:3]:
            shutil.copy(src, root / c / src.name)
    for name, data in good_kinds(reals[0]).items():
        (root / "LYMPHOCYTE" / name).write_bytes(data)
    add_bad_inputs(root / "MONOCYTE", reals[0], reals[-1].read_bytes())
    (root / "BASOPHIL").mkdir()
    (root / "README.txt").write_text("a data set readme")
    out = root.parent / "eval"
    res = runner.invoke(app, ["evaluate", "--checkpoint", checkpoint, "--data", str(root),
                              "--output", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    return root, metrics, pd.read_parquet(out / "quarantine.parquet")


def test_evaluate_reconciles_every_bad_kind(evaluated):
    root, metrics, quarantine = evaluated
    files = on_disk(root)
    counts = metrics["counts"]
    n_good = 3 * len(PAPER_CLASSES) + len(GOOD_KINDS)
    assert counts["seen"] == len(files)
    assert counts["used"] == metrics["n"] == n_good
    assert counts["quarantined"] == len(quarantine) == len(files) - n_good
    assert not quarantine["uri"].duplicated().any() and set(quarantine["uri"]) <= files
    reasons = dict(zip(quarantine["uri"], quarantine["reason"], strict=True))
    monocyte = f"{root}/MONOCYTE/"
    assert {u.removeprefix(monocyte) for u in reasons if u.startswith(monocyte)} == set(
        EVALUATE_REASONS)
    for name, fragment in EVALUATE_REASONS.items():
        assert fragment in reasons[monocyte + name], (name, reasons[monocyte + name])
    assert "outside a class folder" in reasons[f"{root}/README.txt"]
