"""Ray Data: records -> decoded uint8 images, with bad inputs kept as quarantine rows.

The one ingestion path used by training, evaluation and scoring. Reading goes through
fsspec inside the Ray tasks (per-file errors become quarantine rows, not task failures).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray

from wbc_ray import storage
from wbc_ray.data.decode import BadImage, decode_preprocessed
from wbc_ray.schema import BOX_COLUMNS, MAX_PIXELS

log = logging.getLogger(__name__)
ROWS_PER_BLOCK = 256  # ~7.5 MB of 100x100 RGB per block: small enough to stream


def _read(uri: str) -> bytes:
    fs, path = storage.filesystem(uri)  # fsspec caches filesystem instances per process
    with fs.open(path, "rb") as f:
        return f.read()


class DecodeBatch:
    """``map_batches`` function: adds ``image`` (N, S, S, 3) uint8 and ``error`` (str).

    Rows that fail keep a zero image and a non-empty ``error`` naming the reason, so that
    every input is accounted for downstream.
    """

    def __init__(self, size: int, max_pixels: int = MAX_PIXELS, io_threads: int = 8,
                 preprocess: dict | None = None):
        self.size, self.max_pixels, self.io_threads = size, max_pixels, io_threads
        self.preprocess = preprocess or {}

    def _one(self, uri: str, box) -> tuple[np.ndarray | None, str, bool]:
        try:
            data = _read(uri)
        except FileNotFoundError:
            return None, "file not found", False
        except Exception as e:  # permissions, network: reported, not fatal
            return None, f"unreadable file: {type(e).__name__}: {e}", False
        try:
            image, located = decode_preprocessed(data, self.size, box, self.max_pixels,
                                                 self.preprocess)
            return image, "", located
        except BadImage as e:
            return None, str(e), False

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        n = len(batch)
        boxes = (batch[list(BOX_COLUMNS)].to_numpy(dtype="float64")
                 if set(BOX_COLUMNS) <= set(batch.columns) else np.full((n, 4), np.nan))
        uris = batch["uri"].tolist()
        workers = self.io_threads if storage.is_remote(uris[0] if uris else "") else 1
        if workers > 1:  # object stores: overlap request latency
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(self._one, uris, boxes))
        else:
            results = [self._one(u, b) for u, b in zip(uris, boxes, strict=True)]
        images = np.zeros((n, self.size, self.size, 3), dtype=np.uint8)
        errors, located = [], []
        for i, (img, err, found) in enumerate(results):
            if img is not None:
                images[i] = img
            errors.append(err)
            located.append(found)
        out = batch.copy()
        out["error"] = errors
        out["image"] = list(images)
        if self.preprocess.get("locate"):
            out["located"] = located  # False: no nucleus found, classified from the whole image
        return out


def decode_dataset(records: pd.DataFrame, size: int, max_pixels: int = MAX_PIXELS,
                   num_cpus: float = 1, preprocess: dict | None = None) -> ray.data.Dataset:
    """Lazy dataset of ``records`` plus ``image`` and ``error`` columns.

    Records enter as ready-made blocks of ``ROWS_PER_BLOCK`` rows, so decoding starts at
    once: a ``repartition`` would add an all-to-all stage that waits for every record and
    needs free CPUs that model actors may hold on a small machine. ``num_cpus`` is what
    each decode task asks for; a following actor stage that asks for the same is fused
    with it.
    """
    if records.empty:
        raise ValueError("no input images to read")
    rows = records.reset_index(drop=True)
    blocks = [rows.iloc[i:i + ROWS_PER_BLOCK] for i in range(0, len(rows), ROWS_PER_BLOCK)]
    return ray.data.from_pandas(blocks).map_batches(
        decode_batch, fn_kwargs={"size": size, "max_pixels": max_pixels,
                                 "preprocess": preprocess},
        batch_format="pandas", batch_size=ROWS_PER_BLOCK, num_cpus=num_cpus)


def decode_batch(batch: pd.DataFrame, size: int, max_pixels: int,
                 preprocess: dict | None = None) -> pd.DataFrame:
    """Task-friendly wrapper of :class:`DecodeBatch` (no actor needed: it holds no state)."""
    return DecodeBatch(size, max_pixels, preprocess=preprocess)(batch)


def decode_materialized(records: pd.DataFrame, size: int, max_pixels: int = MAX_PIXELS,
                        preprocess: dict | None = None) -> ray.data.Dataset:
    """``decode_dataset`` run to completion, its blocks held in the object store.

    The stream is one map stage, so Ray Data's per-operator resource reservation has
    nothing to protect and only halves the tasks in flight on a small machine: 2 CPUs ran
    1.7x faster with it off (docs/PERFORMANCE.md, ``ingest``). It is turned off for this
    dataset only; pipelines with several stages keep it.
    """
    ds = decode_dataset(records, size, max_pixels, preprocess=preprocess)
    ds.context.op_resource_reservation_enabled = False
    return ds.materialize()


def from_cache_or_decode(records: pd.DataFrame, size: int, max_pixels: int,
                         cache: str | None, key: str, preprocess: dict | None = None
                         ) -> ray.data.Dataset:
    """Decode once; with ``cache`` set, reuse decoded uint8 Parquet shards across runs."""
    if cache:
        uri = storage.join(cache, f"{key}-{size}px{preprocess_tag(preprocess)}")
        fs, path = storage.pyarrow_filesystem(uri)
        if storage.exists(storage.join(uri, "_COMPLETE")):
            log.info("reading decoded cache %s", uri)
            return ray.data.read_parquet(path, filesystem=fs)
        ds = decode_materialized(records, size, max_pixels, preprocess)
        ds.write_parquet(path, filesystem=fs)
        storage.write_text(storage.join(uri, "_COMPLETE"), "")
        return ray.data.read_parquet(path, filesystem=fs)
    return decode_materialized(records, size, max_pixels, preprocess)


def preprocess_tag(preprocess: dict | None) -> str:
    """A cache-name suffix for a preprocessing spec ("" when it does nothing)."""
    spec = {k: v for k, v in (preprocess or {}).items() if v not in (None, False, "none")}
    if not spec:
        return ""
    import hashlib
    import json

    return "-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Quarantine:
    """Inputs that could not be used, with the reason; counts reconcile with inputs seen."""

    rows: pd.DataFrame  # uri, reason

    def write(self, uri: str) -> None:
        storage.write_parquet(storage.join(uri, "quarantine.parquet"), self.rows)


def split_errors(ds: ray.data.Dataset) -> tuple[ray.data.Dataset, pd.DataFrame]:
    """(good rows, quarantined ``uri``/``reason`` frame) of a materialized decoded dataset."""
    bad = ds.filter(expr="error != ''").select_columns(["uri", "error"]).to_pandas()
    bad = bad.rename(columns={"error": "reason"}).reindex(columns=["uri", "reason"])
    return ds.filter(expr="error == ''"), bad
