"""Read a scoring output for review without loading the run: one sample's files at a time.

At start the run is checked (tables present, columns this version can read) and indexed:
the samples table (one small row per sample) and, for each sample, the ``cells/`` files
that hold it, found by reading only the ``sample_id`` column of each file. A sample view
then reads just that sample's files, so memory does not grow with the run.
"""

from __future__ import annotations

import json
import posixpath
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from wbc_ray import storage
from wbc_ray.schema import BOX_COLUMNS

KEY = ["sample_id", "cell_id"]
CELL_COLUMNS = ("sample_id", "cell_id", "uri", "label", "confidence", "needs_review",
                "checkpoint_fingerprint", "scored_at")
SAMPLE_COLUMNS = ("sample_id", "total_cells", "needs_review", "insufficient_count", "flags",
                  "checkpoint_fingerprint", "computed_at")
HIVE = pads.partitioning(pa.schema([("run_date", pa.string())]), flavor="hive")
READ_THREADS = 8  # concurrent footer/column reads while indexing (object-store GETs overlap)
SAMPLE_CACHE = 16  # samples whose cells stay in memory


class ScoredOutputError(ValueError):
    """The scoring output is missing, empty or written by an incompatible version."""


@dataclass(frozen=True)
class RunInfo:
    root: str
    fingerprint: str  # the checkpoint whose results are reviewed
    classes: tuple[str, ...]  # the checkpoint's classes, in its order
    model: str
    package_version: str  # of the scorer that wrote the newest run summary


def prob_column(name: str) -> str:
    return f"p_{name.lower()}"


def _dataset(uri: str) -> pads.Dataset:
    pafs, path = storage.pyarrow_filesystem(uri)
    return pads.dataset(path, filesystem=pafs, format="parquet", partitioning=HIVE)


def _table_dataset(root: str, table: str) -> pads.Dataset:
    uri = storage.join(root, table)
    if not storage.exists(uri):
        raise ScoredOutputError(
            f"{root} is not a scoring output: {table}/ is missing (expected cells/ and "
            f"samples/ as written by `wbc-ray score --output {root}`)")
    ds = _dataset(uri)
    if not ds.files:
        raise ScoredOutputError(f"{uri} holds no Parquet files: nothing has been scored yet")
    return ds


def _check_columns(ds: pads.Dataset, table: str, required, version: str) -> None:
    missing = [c for c in required if c not in ds.schema.names]
    if missing:
        raise ScoredOutputError(
            f"{table}/ lacks columns {missing}: written by an incompatible wbc-ray version "
            f"({version or 'unknown'}); rescore it with this version (`wbc-ray score --rescore`)")


def newest_run_summary(root: str) -> dict:
    """The newest ``runs/*.json`` (names start with the run date and UTC time); {} if none."""
    fs, path = storage.filesystem(storage.join(root, "runs"))
    if not fs.exists(path):
        return {}
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".json"))
    for name in reversed(names):
        try:
            summary = json.loads(storage.read_text(storage.uri_of(fs, name)))
        except (OSError, ValueError):
            continue
        if summary.get("checkpoint_fingerprint"):
            return summary
    return {}


def _classes_from_schema(ds: pads.Dataset) -> tuple[str, ...]:
    return tuple(n[2:].upper() for n in ds.schema.names if n.startswith("p_"))


def open_info(root: str, fingerprint: str | None = None) -> tuple[RunInfo, pads.Dataset,
                                                                  pads.Dataset]:
    """Check the output at ``root`` and pick the checkpoint to review (default: newest run's)."""
    try:
        storage.check_readable(root)
    except FileNotFoundError as e:
        raise ScoredOutputError(f"no scoring output at {root}: {e}") from e
    cells, samples = _table_dataset(root, "cells"), _table_dataset(root, "samples")
    summary = newest_run_summary(root)
    version = str(summary.get("package_version", ""))
    _check_columns(cells, "cells", CELL_COLUMNS, version)
    _check_columns(samples, "samples", SAMPLE_COLUMNS, version)
    if fingerprint is None:
        fingerprint = summary.get("checkpoint_fingerprint")
    if fingerprint is None:  # no run summaries: the newest scored cell's checkpoint
        t = cells.to_table(columns=["checkpoint_fingerprint", "scored_at"]).to_pandas()
        fingerprint = str(t.sort_values("scored_at")["checkpoint_fingerprint"].iloc[-1])
    same = summary.get("checkpoint_fingerprint") == fingerprint
    classes = tuple(summary["classes"]) if same and summary.get("classes") else \
        _classes_from_schema(cells)
    missing = [prob_column(c) for c in classes if prob_column(c) not in cells.schema.names]
    if len(classes) < 2 or missing:
        raise ScoredOutputError(f"{root}: cells/ lacks the probability columns {missing} of "
                                f"the classes {list(classes)}")
    info = RunInfo(root, str(fingerprint), classes, str(summary.get("model", "") if same else ""),
                   version)
    return info, cells, samples


class ScoredRun:
    """One checkpoint's results in a scoring output, indexed per sample (module docs)."""

    def __init__(self, root: str, fingerprint: str | None = None):
        self.info, self._cells_ds, self._samples_ds = open_info(root, fingerprint)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, pd.DataFrame] = OrderedDict()
        self.refresh()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def refresh(self) -> None:
        """Re-read the samples table and the per-sample file index (a new night arrived)."""
        info = self.info
        self._cells_ds = _dataset(storage.join(info.root, "cells"))
        self._samples_ds = _dataset(storage.join(info.root, "samples"))
        samples = self._samples_ds.to_table(
            filter=pads.field("checkpoint_fingerprint") == info.fingerprint).to_pandas()
        if samples.empty:
            raise ScoredOutputError(f"{info.root}: samples/ has no rows for checkpoint "
                                    f"{info.fingerprint}")
        samples["run_date"] = samples["run_date"].astype(str)
        latest = samples.sort_values(["run_date", "computed_at"], kind="stable") \
            .drop_duplicates("sample_id", keep="last")
        index = self._index_files()
        with self._lock:
            self._samples = latest.sort_values("sample_id").reset_index(drop=True)
            self._files = index
            self._cache.clear()

    def _index_files(self) -> dict[str, list[str]]:
        """sample_id -> the cells/ files (paths) holding its rows for this checkpoint."""
        wanted = pads.field("checkpoint_fingerprint") == self.info.fingerprint
        frags = list(self._cells_ds.get_fragments())

        def ids(frag) -> tuple[str, np.ndarray]:
            t = frag.to_table(columns=["sample_id"], filter=wanted)
            return frag.path, pd.unique(t.column("sample_id").to_numpy(zero_copy_only=False))

        index: dict[str, list[str]] = {}
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for path, sids in pool.map(ids, frags):
                for sid in sids:
                    index.setdefault(str(sid), []).append(path)
        return index

    def samples(self) -> pd.DataFrame:
        """The latest machine differential of every sample (one row each), with run_date."""
        return self._samples

    def sample(self, sample_id: str) -> pd.Series | None:
        rows = self._samples[self._samples["sample_id"] == sample_id]
        return None if rows.empty else rows.iloc[0]

    def has_sample(self, sample_id: str) -> bool:
        return sample_id in self._files

    def cells(self, sample_id: str) -> pd.DataFrame:
        """The sample's current cells (latest night per cell), in a stable order; cached."""
        with self._lock:
            if sample_id in self._cache:
                self._cache.move_to_end(sample_id)
                return self._cache[sample_id]
            paths = list(self._files.get(sample_id, ()))
        if not paths:
            raise KeyError(sample_id)
        frame = self._read_cells(sample_id, paths)
        with self._lock:
            self._cache[sample_id] = frame
            while len(self._cache) > SAMPLE_CACHE:
                self._cache.popitem(last=False)
        return frame

    def _read_cells(self, sample_id: str, paths: list[str]) -> pd.DataFrame:
        pafs, _ = storage.pyarrow_filesystem(storage.join(self.info.root, "cells"))
        wanted = [*CELL_COLUMNS, *BOX_COLUMNS, *(prob_column(c) for c in self.classes)]
        parts = []
        for path in paths:
            schema = pq.read_schema(path, filesystem=pafs)
            t = pq.read_table(path, filesystem=pafs,
                              columns=[c for c in wanted if c in schema.names],
                              filters=[("sample_id", "=", sample_id),
                                       ("checkpoint_fingerprint", "=", self.info.fingerprint)])
            df = t.to_pandas()
            df["run_date"] = _run_date_of(path)
            parts.append(df)
        cells = pd.concat(parts, ignore_index=True)
        for c in BOX_COLUMNS:
            if c not in cells:
                cells[c] = np.nan
        cells = cells.sort_values(["run_date", "scored_at"], kind="stable") \
            .drop_duplicates(KEY, keep="last")
        return cells.sort_values("cell_id", kind="stable").reset_index(drop=True)

    def cell(self, sample_id: str, cell_id: str) -> pd.Series | None:
        """The cell's row, or None when the scored tables do not list it."""
        if not self.has_sample(sample_id):
            return None
        cells = self.cells(sample_id)
        rows = cells[cells["cell_id"] == cell_id]
        return None if rows.empty else rows.iloc[0]


def _run_date_of(path: str) -> str:
    folder = posixpath.basename(posixpath.dirname(path.replace("\\", "/")))
    return folder.split("=", 1)[1] if folder.startswith("run_date=") else ""
