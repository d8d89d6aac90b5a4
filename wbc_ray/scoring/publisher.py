"""Publishing one run's results, a whole sample at a time (the layout is :mod:`.publish`).

Each sample is the unit of atomicity: its quarantine rows, then its cells, then its
differential, each one file written whole. A run killed midway keeps every sample published
so far; the next run reads the state back from the outputs and scores the rest, and
republishes any differential left stale (cells published, differential not).

A sample that receives new images on a later night gets its differential recomputed from
all of its cells for this checkpoint and published under the new night: ``samples/`` holds
one row per sample and night it changed; the latest night is the current result. A sample
with no cell at all for the checkpoint (an empty folder, or every input quarantined) gets
one row with ``total_cells`` 0 and the flag ``no_cells``, once.

Provenance (model, checkpoint fingerprint, package version, time stamp) is added in one
place, :meth:`Publisher.provenance`, as each table is written.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from wbc_ray import __version__, storage
from wbc_ray.scoring.differential import differential
from wbc_ray.scoring.inputs import KEY, Inputs
from wbc_ray.scoring.plan import Run
from wbc_ray.scoring.publish import (
    QUARANTINE_SCHEMA,
    ROW_KEYS,
    State,
    cells_schema,
    merge_rows,
    read_file,
    samples_schema,
)

# The time stamp column of each table; every table also gets the fingerprint and version.
STAMP = {"cells": "scored_at", "quarantine": "quarantined_at", "samples": "computed_at"}
WITH_MODEL = ("cells", "samples")  # tables that name the model


@dataclass(frozen=True)
class PublishHooks:
    """How publishing runs; tests change it (e.g. the crash test's timing), nothing else.

    ``threads``: samples published concurrently (object-store PUTs overlap).
    ``after_sample(sample_id)``: called in the publishing thread once a sample is whole in
    the outputs.
    """

    threads: int = 4
    after_sample: Callable[[str], None] | None = None


class Publisher:
    """Publishes one sample at a time: quarantine, cells, then its differential.

    Use as a context manager: :meth:`submit` queues a sample on the thread pool,
    leaving the block waits for every queued sample and raises the first failure.
    """

    def __init__(self, run: Run, state: State, sample_ids: frozenset[str] = frozenset(),
                 hooks: PublishHooks | None = None):
        self.run, self.state = run, state
        self.sample_ids = sample_ids  # the input's samples: each one gets a samples row
        self.hooks = hooks or PublishHooks()
        self.known = {sid: df[[*KEY, "label", "needs_review"]]
                      for sid, df in state.cells.groupby("sample_id", sort=False)}
        self.with_cells = set(self.known)  # samples with at least one cell, after this run
        zero = state.samples.loc[state.samples["total_cells"] == 0, "sample_id"]
        self.reported_empty = set(zero)  # samples that already have their no_cells row
        self.cells_schema = cells_schema(run.classes)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # publish() runs in a thread pool
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []

    def __enter__(self) -> Publisher:
        self._pool = ThreadPoolExecutor(self.hooks.threads)
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        if exc[0] is None:
            self._raise_failed(all_done=True)

    def submit(self, sample_id: str, cells: pd.DataFrame, quarantine: pd.DataFrame) -> None:
        """Queue :meth:`publish`; raises the failure of an earlier queued sample, if any."""
        self._raise_failed()
        self._futures.append(self._pool.submit(self.publish, sample_id, cells, quarantine))

    def _raise_failed(self, all_done: bool = False) -> None:
        for f in self._futures:
            if (all_done or f.done()) and f.exception() is not None:
                raise f.exception()

    def empty_cells(self) -> pd.DataFrame:
        return self.cells_schema.empty_table().to_pandas()

    def publish(self, sample_id: str, cells: pd.DataFrame, quarantine: pd.DataFrame,
                refresh: bool = False) -> None:
        """Write this run's rows of one sample; ``refresh`` recomputes its differential."""
        due = self._differential_due(sample_id, cells, refresh)
        if not (due or len(cells) or len(quarantine)):
            return
        if len(quarantine):
            self._write("quarantine", sample_id, quarantine[[*KEY, "uri", "reason"]],
                        QUARANTINE_SCHEMA)
        if len(cells):
            self._write("cells", sample_id, cells, self.cells_schema)
        if due:
            self._write_differential(sample_id, cells)
        with self._lock:
            if len(cells):
                self.with_cells.add(sample_id)
            self.counts.update({"cells": len(cells), "quarantine": len(quarantine),
                                "samples": int(due)})
        if self.hooks.after_sample is not None:
            self.hooks.after_sample(sample_id)

    def _differential_due(self, sample_id: str, cells: pd.DataFrame, refresh: bool) -> bool:
        if len(cells) or refresh:
            return True
        if sample_id in self.known:  # has cells from earlier runs: its differential stands
            return False
        return sample_id in self.sample_ids and (self.run.cfg.rescore
                                                 or sample_id not in self.reported_empty)

    def provenance(self, table: str) -> dict:
        """The columns every row of ``table`` written by this run carries."""
        run = self.run
        cols = {"model": run.meta.model} if table in WITH_MODEL else {}
        return {**cols, "checkpoint_fingerprint": run.fingerprint,
                "package_version": __version__, STAMP[table]: run.started}

    def _write(self, table: str, sample_id: str, rows: pd.DataFrame, schema) -> None:
        """``schema``: a pyarrow schema, or a function of the rows that gives one."""
        run = self.run
        rows = rows.assign(**self.provenance(table))
        schema = schema(rows) if callable(schema) else schema
        uri = run.layout.file(table, run.run_date, sample_id, run.fingerprint)
        existing = (read_file(uri) if (table, run.run_date, sample_id) in self.state.files
                    else None)  # a second run on the same night: merge, never duplicate
        storage.write_parquet(uri, merge_rows(existing, rows, ROW_KEYS[table]), schema)

    def _write_differential(self, sample_id: str, cells: pd.DataFrame) -> None:
        """The sample's differential over all its cells for this checkpoint (a no_cells row
        when it has none)."""
        cfg = self.run.cfg
        current = merge_rows(self.known.get(sample_id),
                             cells[[*KEY, "label", "needs_review"]])
        row = differential(current, self.run.classes, cfg.reference_ranges, cfg.min_cells,
                           samples=[sample_id])
        self._write("samples", sample_id, row, samples_schema)


def publish_without_images(publisher: Publisher, inputs: Inputs, todo: pd.DataFrame,
                           rejects: pd.DataFrame, state: State) -> None:
    """Samples with nothing to decode: new rejects only, a differential left stale, or no
    cell at all (their no_cells row)."""
    streaming = set(todo["sample_id"])
    stale = set() if publisher.run.cfg.rescore else stale_samples(state)
    by_sample = dict(tuple(rejects.groupby("sample_id", sort=False)))
    cell_less = set(inputs.sample_ids) - publisher.with_cells
    empty = rejects.iloc[:0]
    for sid in sorted((set(by_sample) | stale | cell_less) - streaming):
        publisher.publish(sid, publisher.empty_cells(), by_sample.get(sid, empty),
                          refresh=sid in stale)


def stale_samples(state: State) -> set[str]:
    """Samples whose latest differential is missing or older than their latest cells.

    That happens when a run dies between publishing a sample's cells and its differential.
    """
    cells = state.cells.groupby("sample_id").agg(n=("cell_id", "size"),
                                                 newest=("scored_at", "max"))
    diff = state.samples.set_index("sample_id").reindex(cells.index)
    return set(cells.index[diff["total_cells"].isna() | (diff["total_cells"] != cells["n"])
                           | (diff["computed_at"] < cells["newest"])])
