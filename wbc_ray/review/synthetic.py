"""A synthetic scoring output in the on-disk format, for the review benchmark and web tests.

Written with the scorer's own schema helpers and :func:`differential`, without Ray or a
model: labels and confidences are random, images are a few small PNGs shared by many cells.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
from PIL import Image

from wbc_ray import __version__, storage
from wbc_ray.scoring.differential import differential
from wbc_ray.scoring.publish import Layout, cells_schema, prob_column, samples_schema

FINGERPRINT = "5eed5eed5eed5eed"


def write_images(folder: str, n: int, seed: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        path = os.path.join(folder, f"img{i:03d}.png")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        paths.append(path)
    return paths


def write_output(root: str, images: list[str], *, samples: int, cells_per_sample: int,
                 classes: tuple[str, ...], ranges: dict, run_date: str = "2031-01-01",
                 threshold: float = 0.6, min_cells: int = 100, seed: int = 0) -> None:
    """``samples`` x ``cells_per_sample`` cells, one file per sample per table."""
    rng = np.random.default_rng(seed)
    layout, schema = Layout(root), cells_schema(classes)
    now = pd.Timestamp.now(tz="UTC").floor("us")
    for s in range(samples):
        sid = f"S{s:05d}"
        logits = rng.normal(0, 2, (cells_per_sample, len(classes)))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cells = pd.DataFrame({
            "sample_id": sid, "cell_id": [f"c{i:04d}" for i in range(cells_per_sample)],
            "uri": [images[(s * cells_per_sample + i) % len(images)]
                    for i in range(cells_per_sample)],
            "xmin": np.nan, "ymin": np.nan, "xmax": np.nan, "ymax": np.nan,
            "label": np.asarray(classes, dtype=object)[p.argmax(axis=1)],
            "confidence": p.max(axis=1).astype(np.float32)})
        cells["needs_review"] = cells["confidence"] < threshold
        for j, c in enumerate(classes):
            cells[prob_column(c)] = p[:, j].astype(np.float32)
        cells = cells.assign(model="paper_cnn", checkpoint_fingerprint=FINGERPRINT,
                             package_version=__version__, scored_at=now)
        storage.write_parquet(layout.file("cells", run_date, sid, FINGERPRINT), cells, schema)
        row = differential(cells, classes, ranges, min_cells).assign(
            model="paper_cnn", checkpoint_fingerprint=FINGERPRINT, package_version=__version__,
            computed_at=now)
        storage.write_parquet(layout.file("samples", run_date, sid, FINGERPRINT), row,
                              samples_schema(row))
    summary = {"status": "ok", "run_date": run_date, "checkpoint_fingerprint": FINGERPRINT,
               "model": "paper_cnn", "classes": list(classes), "package_version": __version__}
    storage.write_text(storage.join(root, "runs", f"{run_date}-synthetic.json"),
                       json.dumps(summary))
