"""The scoring outputs: layout, atomic per-sample publishing, and the state read back from them.

Layout under the output root (Parquet, hive partitions; pandas, DuckDB and Spark read it)::

    cells/run_date=YYYY-MM-DD/part-<sample>-<hash>-<fingerprint>.parquet
    quarantine/run_date=YYYY-MM-DD/part-<sample>-<hash>-<fingerprint>.parquet
    samples/run_date=YYYY-MM-DD/part-<sample>-<hash>-<fingerprint>.parquet
    runs/<run_date>-<UTC timestamp>-<id>.json

One file per (night, sample, checkpoint) in each table. ``sample_id`` is a column, not a
partition: a sample holds ~100 cells, so per-sample folders would mean millions of tiny
directories to list; ids are free text that pyarrow, Spark and DuckDB each escape differently
in folder names; and since every file holds one sample, Parquet min/max statistics already
let all three skip other samples' files for ``WHERE sample_id = …``. The file name carries a
sanitised prefix and a hash of the id, so any id maps to one safe, deterministic name.

Publishing a file is atomic: locally a hidden temp file (readers skip names starting with
``.``) renamed over the final name; on object stores one PUT of the final key, which
readers see whole or not at all. A rerun on the same night merges its rows into that
night's file (by ``sample_id, cell_id``), so nothing is ever duplicated within a night.

The state for incremental runs is read back from ``cells/`` and ``quarantine/`` (no side
database): an input is done for a checkpoint when its ``(sample_id, cell_id)`` has a row
with that ``checkpoint_fingerprint`` in either. A cell's current result is its row from the
latest night (``--rescore`` adds a newer one).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from wbc_ray import storage
from wbc_ray.schema import KEY as SCHEMA_KEY

KEY = list(SCHEMA_KEY)
TABLES = ("cells", "quarantine", "samples")
ROW_KEYS = {"cells": KEY, "quarantine": KEY, "samples": ["sample_id"]}  # one row per key
_HIVE = pads.partitioning(pa.schema([("run_date", pa.string())]), flavor="hive")
_STATE_COLUMNS = {
    "cells": [*KEY, "label", "needs_review", "scored_at"],
    "quarantine": [*KEY, "reason"],
    "samples": ["sample_id", "total_cells", "computed_at"],
}


def file_name(sample_id: str, fingerprint: str) -> str:
    """A safe, deterministic file name for any sample id (module docs)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", sample_id)[:48]
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"part-{slug}-{digest}-{fingerprint}.parquet"


@dataclass(frozen=True)
class Layout:
    root: str  # the output URI

    def partition(self, table: str, run_date: str) -> str:
        return storage.join(self.root, table, f"run_date={run_date}")

    def file(self, table: str, run_date: str, sample_id: str, fingerprint: str) -> str:
        return storage.join(self.partition(table, run_date), file_name(sample_id, fingerprint))

    def run_summary(self, run_date: str, stamp: str) -> str:
        return storage.join(self.root, "runs", f"{run_date}-{stamp}-{uuid.uuid4().hex[:6]}.json")


def read_file(uri: str) -> pd.DataFrame:
    return storage.read_parquet(uri)


def merge_rows(existing: pd.DataFrame | None, new: pd.DataFrame,
               key: list[str] = KEY) -> pd.DataFrame:
    """``existing`` rows whose key is not in ``new``, then ``new``: a rerun replaces, never adds."""
    if existing is None or existing.empty:
        return new
    keep = ~existing.set_index(key).index.isin(new.set_index(key).index)
    return pd.concat([existing.loc[keep], new], ignore_index=True)


def read_table_rows(layout: Layout, table: str, fingerprint: str,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """Rows of ``table`` scored by ``fingerprint``, with ``run_date``; empty when none."""
    columns = columns or _STATE_COLUMNS[table]
    uri = storage.join(layout.root, table)
    fs, path = storage.filesystem(uri)
    if hasattr(fs, "invalidate_cache"):  # another process may have written since
        fs.invalidate_cache(path)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in [*columns, "run_date"]})
    if not fs.exists(path):
        return empty
    pafs, path = storage.pyarrow_filesystem(uri)
    dataset = pads.dataset(path, filesystem=pafs, format="parquet", partitioning=_HIVE)
    if not dataset.files:
        return empty
    got = dataset.to_table(columns=[*columns, "run_date"],
                           filter=pads.field("checkpoint_fingerprint") == fingerprint)
    return got.to_pandas()


@dataclass(frozen=True)
class State:
    """What the outputs already hold for one checkpoint fingerprint."""

    cells: pd.DataFrame  # latest row per (sample_id, cell_id): label, needs_review, run_date
    quarantine: pd.DataFrame  # latest row per key: reason, run_date
    samples: pd.DataFrame  # latest differential per sample_id: total_cells, run_date
    duplicate_cells: int  # rows repeating a key within one night (must stay 0)
    files: frozenset[tuple[str, str, str]]  # (table, run_date, sample_id) with a file

    def done_keys(self) -> pd.MultiIndex:
        return self.cells.set_index(KEY).index.union(self.quarantine.set_index(KEY).index)


def _latest(df: pd.DataFrame, key: list[str], order: list[str]) -> pd.DataFrame:
    return df.sort_values(order, kind="stable").drop_duplicates(key, keep="last") \
        .reset_index(drop=True)


def read_state(layout: Layout, fingerprint: str) -> State:
    """Read back the published state for ``fingerprint`` (module docs)."""
    raw = {t: read_table_rows(layout, t, fingerprint) for t in TABLES}
    cells, quarantine, samples = raw["cells"], raw["quarantine"], raw["samples"]
    files = frozenset((t, d, s) for t, df in raw.items()
                      for d, s in zip(df["run_date"], df["sample_id"], strict=True))
    return State(
        cells=_latest(cells, KEY, ["run_date", "scored_at"]),
        quarantine=_latest(quarantine, KEY, ["run_date"]),
        samples=_latest(samples, ["sample_id"], ["run_date", "computed_at"]),
        duplicate_cells=int(cells.duplicated(["run_date", *KEY]).sum()),
        files=files,
    )


def cells_schema(classes: tuple[str, ...]) -> pa.Schema:
    """One row per scored cell; ``p_<class>`` per class in the checkpoint's order."""
    return pa.schema([
        ("sample_id", pa.string()), ("cell_id", pa.string()), ("uri", pa.string()),
        *[(c, pa.float64()) for c in ("xmin", "ymin", "xmax", "ymax")],
        ("label", pa.string()), ("confidence", pa.float32()), ("needs_review", pa.bool_()),
        *[(prob_column(c), pa.float32()) for c in classes],
        ("model", pa.string()), ("checkpoint_fingerprint", pa.string()),
        ("package_version", pa.string()), ("scored_at", pa.timestamp("us", tz="UTC")),
    ])


QUARANTINE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("cell_id", pa.string()), ("uri", pa.string()),
    ("reason", pa.string()), ("checkpoint_fingerprint", pa.string()),
    ("package_version", pa.string()), ("quarantined_at", pa.timestamp("us", tz="UTC")),
])


def prob_column(name: str) -> str:
    return f"p_{name.lower()}"


def samples_schema(df: pd.DataFrame) -> pa.Schema:
    """The differential's columns as inferred, with all-None flag columns typed as strings."""
    schema = pa.Schema.from_pandas(df, preserve_index=False)
    for i, f in enumerate(schema):
        if pa.types.is_null(f.type):
            schema = schema.set(i, pa.field(f.name, pa.string()))
    return schema
