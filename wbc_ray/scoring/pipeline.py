"""Nightly scoring: an archive of cell images -> per-cell labels and per-sample differentials.

``score(cfg)`` is the whole job (the CLI and ``jobs/nightly_score.py`` only build the
config). One Ray Data stream does the heavy work::

    records (driver, metadata only) -> decode + crop + resize (CPU tasks)
        -> Predictor (actor pool; one GPU per actor when the cluster has GPUs)
        -> driver: group rows by sample, publish each sample as soon as it is complete

Only labels and probabilities reach the driver, never pixels, and Ray Data's streaming
executor bounds the images in flight, so memory does not grow with the archive. The
driver publishes (see :mod:`wbc_ray.scoring.publish`) because each sample is the unit of
atomicity: its quarantine rows, then its cells, then its differential, each one file
written whole. A run killed midway keeps every sample published so far; the next run
reads the state back from the outputs and scores the rest.

A sample that receives new images on a later night gets its differential recomputed from
all of its cells for this checkpoint and published under the new night: ``samples/``
holds one row per sample and night it changed; the latest night is the current result.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray

from wbc_ray import __version__
from wbc_ray.config import ScoreConfig
from wbc_ray.data.dataset import ROWS_PER_BLOCK, decode_dataset
from wbc_ray.inference import Predictor
from wbc_ray.models.checkpoint import CheckpointMeta, fingerprint, read_meta
from wbc_ray.scoring.differential import differential
from wbc_ray.scoring.inputs import KEY, RECORD_COLUMNS, Inputs, read_inputs
from wbc_ray.scoring.publish import (
    QUARANTINE_SCHEMA,
    ROW_KEYS,
    Layout,
    State,
    cells_schema,
    merge_rows,
    prob_column,
    put_atomic,
    read_file,
    read_state,
    samples_schema,
    to_parquet_bytes,
)

log = logging.getLogger(__name__)
MAX_PIXELS = 40_000_000  # larger images are quarantined as decompression bombs
PUBLISH_THREADS = 4  # concurrent per-sample publishes (object-store PUTs overlap)
# Test seam for the crash test: publish samples one at a time, sleeping after each.
PUBLISH_DELAY_ENV = "WBC_RAY_SCORE_PUBLISH_DELAY_S"


@dataclass(frozen=True)
class Run:
    """Everything fixed for one run."""

    cfg: ScoreConfig
    run_date: str
    started: pd.Timestamp  # UTC; also the ``scored_at`` of every cell of the run
    layout: Layout
    meta: CheckpointMeta
    fingerprint: str

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes


def score(cfg: ScoreConfig, progress: bool = True) -> dict:
    """Score ``cfg.input`` with ``cfg.checkpoint`` into ``cfg.output``; returns the run summary.

    Incremental: inputs whose ``(sample_id, cell_id)`` already has a row for this checkpoint
    in ``cells/`` or ``quarantine/`` are skipped (``cfg.rescore`` scores them again).
    Raises RuntimeError, after writing the summary, when inputs and outputs do not reconcile.
    """
    from wbc_ray.ray_session import init_ray

    t0 = time.perf_counter()
    run = _start(cfg)
    inputs = read_inputs(cfg.input, exclude=cfg.output)
    state = read_state(run.layout, run.fingerprint)
    todo, rejects, skipped = _pending(inputs, state, cfg.rescore)
    log.info("%s input: %d inputs, %d to score, %d rejected, %d already done", inputs.kind,
             inputs.seen, len(todo), len(rejects), sum(skipped.values()))
    publisher = Publisher(run, state)
    try:
        _publish_without_images(publisher, todo, rejects, state, cfg.rescore)
        received = 0
        if len(todo):
            init_ray()
            received = _stream(run, todo, rejects, publisher, progress)
    except BaseException as e:  # record what was published before the failure, then re-raise
        failed = _summary(run, inputs, skipped, publisher, None, t0, status="failed")
        failed["error"] = f"{type(e).__name__}: {e}"
        try:
            _write_summary(run, failed)
        except Exception:
            log.exception("could not write the summary of the failed run")
        raise
    check = reconcile(run, inputs, skipped, publisher, received, len(todo))
    summary = _summary(run, inputs, skipped, publisher, check, t0,
                       status="ok" if check["ok"] else "reconciliation_failed")
    _write_summary(run, summary)
    if not check["ok"]:
        raise RuntimeError(f"scoring run does not reconcile: {check}")
    return summary


def _start(cfg: ScoreConfig) -> Run:
    for name in ("checkpoint", "input", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"score needs --{name}")
    if not 0.0 <= cfg.review_threshold <= 1.0:
        raise ValueError(f"review_threshold must lie in [0, 1], got {cfg.review_threshold}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    started = pd.Timestamp.now(tz="UTC").floor("us")
    run_date = cfg.run_date or started.date().isoformat()
    try:
        if dt.date.fromisoformat(run_date).isoformat() != run_date:
            raise ValueError
    except ValueError:
        raise ValueError(f"run_date must be YYYY-MM-DD, got {run_date!r}") from None
    meta = read_meta(cfg.checkpoint)
    stray = sorted(set(cfg.reference_ranges) - set(meta.classes))
    if stray:
        raise ValueError(f"reference_ranges name {stray}, which the checkpoint does not "
                         f"predict (its classes: {list(meta.classes)})")
    return Run(cfg, run_date, started, Layout(cfg.output), meta, fingerprint(cfg.checkpoint))


def _pending(inputs: Inputs, state: State, rescore: bool
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(records to score, rejects to record, counts of inputs already done) for this run."""
    scored = state.cells.set_index(KEY).index
    quarantined = state.quarantine.set_index(KEY).index.difference(scored)
    rec_keys = pd.MultiIndex.from_frame(inputs.records[KEY])
    rej_keys = pd.MultiIndex.from_frame(inputs.rejected[KEY])
    skipped = {"already_scored": 0, "already_quarantined": 0}
    if rescore:
        return inputs.records, inputs.rejected, skipped
    done_rec = rec_keys.isin(scored), rec_keys.isin(quarantined)
    done_rej = rej_keys.isin(scored), rej_keys.isin(quarantined)
    skipped["already_scored"] = int(done_rec[0].sum() + done_rej[0].sum())
    skipped["already_quarantined"] = int(done_rec[1].sum() + done_rej[1].sum())
    todo = inputs.records.loc[~(done_rec[0] | done_rec[1])].reset_index(drop=True)
    rejects = inputs.rejected.loc[~(done_rej[0] | done_rej[1])].reset_index(drop=True)
    return todo, rejects, skipped


class Publisher:
    """Publishes one sample at a time: quarantine, cells, then its differential."""

    def __init__(self, run: Run, state: State):
        self.run, self.state = run, state
        self.known = {sid: df[[*KEY, "label", "needs_review"]]
                      for sid, df in state.cells.groupby("sample_id", sort=False)}
        self.cells_schema = cells_schema(run.classes)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # publish() runs in a thread pool

    def publish(self, sample_id: str, cells: pd.DataFrame, quarantine: pd.DataFrame,
                refresh: bool = False) -> None:
        """Write this run's rows of one sample; ``refresh`` recomputes its differential."""
        run = self.run
        if len(quarantine):
            rows = quarantine[[*KEY, "uri", "reason"]].assign(
                checkpoint_fingerprint=run.fingerprint, package_version=__version__,
                quarantined_at=run.started)
            self._write("quarantine", sample_id, rows, QUARANTINE_SCHEMA)
        if len(cells):
            self._write("cells", sample_id, cells, self.cells_schema)
        wrote_samples = (len(cells) or refresh) and self._write_differential(sample_id, cells)
        with self._lock:
            self.counts.update({"cells": len(cells), "quarantine": len(quarantine),
                                "samples": int(bool(wrote_samples))})

    def _write(self, table: str, sample_id: str, rows: pd.DataFrame, schema) -> None:
        run = self.run
        uri = run.layout.file(table, run.run_date, sample_id, run.fingerprint)
        existing = (read_file(uri) if (table, run.run_date, sample_id) in self.state.files
                    else None)  # a second run on the same night: merge, never duplicate
        put_atomic(uri, to_parquet_bytes(merge_rows(existing, rows, ROW_KEYS[table]), schema))

    def _write_differential(self, sample_id: str, cells: pd.DataFrame) -> bool:
        """The sample's differential over all its cells for this checkpoint; False if none."""
        run, cfg = self.run, self.run.cfg
        current = merge_rows(self.known.get(sample_id),
                             cells[[*KEY, "label", "needs_review"]])
        if current.empty:
            return False
        row = differential(current, run.classes, cfg.reference_ranges, cfg.min_cells)
        row = row.assign(model=run.meta.model, checkpoint_fingerprint=run.fingerprint,
                         package_version=__version__, computed_at=run.started)
        self._write("samples", sample_id, row, samples_schema(row))
        return True


def _publish_without_images(publisher: Publisher, todo: pd.DataFrame, rejects: pd.DataFrame,
                            state: State, rescore: bool) -> None:
    """Samples with nothing to decode: new rejects only, or a differential left stale."""
    streaming = set(todo["sample_id"])
    stale = set() if rescore else stale_samples(state)
    by_sample = dict(tuple(rejects.groupby("sample_id", sort=False)))
    empty = rejects.iloc[:0]
    for sid in sorted((set(by_sample) | stale) - streaming):
        publisher.publish(sid, _empty_cells(publisher), by_sample.get(sid, empty),
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


def _empty_cells(publisher: Publisher) -> pd.DataFrame:
    return publisher.cells_schema.empty_table().to_pandas()


def _stream(run: Run, todo: pd.DataFrame, rejects: pd.DataFrame, publisher: Publisher,
            progress: bool) -> int:
    """Decode, predict and publish ``todo``; returns the number of rows that came back."""
    from tqdm.auto import tqdm

    expected = todo.groupby("sample_id").size().to_dict()
    rejects_of = dict(tuple(rejects.groupby("sample_id", sort=False)))
    buffers: dict[str, list[pd.DataFrame]] = defaultdict(list)
    got: Counter[str] = Counter()
    delay = float(os.environ.get(PUBLISH_DELAY_ENV, "0") or 0)
    futures: list[Future] = []
    received = 0
    with ThreadPoolExecutor(PUBLISH_THREADS) as pool, \
            tqdm(total=len(todo), unit="img", desc=f"scoring {run.run_date}",
                 disable=not progress) as bar:
        for batch in _scored_dataset(run, todo).iter_batches(
                batch_size=None, batch_format="numpy", prefetch_batches=2):
            frame = batch_frame(run, batch)
            received += len(frame)
            bar.update(len(frame))
            for sid, part in frame.groupby("sample_id", sort=False):
                buffers[sid].append(part)
                got[sid] += len(part)
                if got[sid] != expected.get(sid):
                    continue
                rows = pd.concat(buffers.pop(sid), ignore_index=True)
                cells, bad = split_rows(rows)
                bad = pd.concat([bad, rejects_of.get(sid, bad.iloc[:0])], ignore_index=True)
                if delay:  # crash test: one sample at a time, with time to kill between
                    publisher.publish(sid, cells, bad)
                    time.sleep(delay)
                else:
                    futures.append(pool.submit(publisher.publish, sid, cells, bad))
            _raise_failed(futures)
    for f in futures:
        f.result()
    if buffers:
        log.error("samples incomplete after the stream: %s",
                  {s: (got[s], expected.get(s)) for s in list(buffers)[:5]})
    return received


def _raise_failed(futures: list[Future]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


def _scored_dataset(run: Run, todo: pd.DataFrame) -> ray.data.Dataset:
    """The lazy decode -> predict stream (GPU actors when the cluster has GPUs).

    On CPU-only clusters decode asks for the actors' CPUs so that Ray Data fuses it into
    them: each actor decodes and predicts on its own CPUs, and no CPU idles waiting for
    decode tasks that fusion would never launch.
    """
    cfg = run.cfg
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]),
                    default=1)
    actors, cpus, gpus = actor_resources(cfg.actors, ray.cluster_resources(), node_cpus)
    rows = todo[list(RECORD_COLUMNS)]
    ds = decode_dataset(rows, run.meta.input_size, MAX_PIXELS, num_cpus=1 if gpus else cpus)
    blocks = -(-len(rows) // ROWS_PER_BLOCK)
    return ds.map_batches(
        Predictor, fn_constructor_kwargs={"checkpoint": cfg.checkpoint},
        batch_size=cfg.batch_size, batch_format="numpy", num_gpus=gpus, num_cpus=cpus,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, blocks))))


def actor_resources(actors: int | None, cluster: dict[str, float],
                    node_cpus: float | None = None) -> tuple[int, int, int]:
    """(model actors, CPUs per actor, GPUs per actor) for a cluster's resources.

    GPUs: one actor per GPU (or ``actors``), one GPU and one CPU each; decoding runs as CPU
    tasks on the other CPUs. CPU only: one actor per CPU by default (``actors`` caps it),
    the CPUs split evenly between them; decoding is fused into the actors (same CPU
    request), so every core decodes and predicts in turn. Ray caps each actor's torch
    threads at its CPU count. No actor asks for more CPUs than the largest node has
    (``node_cpus``): such an actor would never start. Measured on 2 cores
    (docs/PERFORMANCE.md): 2 actors x 1 CPU run 1.6x the steady rate of 1 actor x 1 CPU,
    and 1.3x that of 1 actor x 2 threads.
    """
    gpus = int(cluster.get("GPU", 0))
    if gpus:
        return actors or gpus, 1, 1
    total = max(1, int(cluster.get("CPU", 1)))
    n = min(actors or total, total)
    per_actor = total // n
    if node_cpus is not None:
        per_actor = min(per_actor, max(1, int(node_cpus)))
    return n, per_actor, 0


def batch_frame(run: Run, batch: dict[str, np.ndarray]) -> pd.DataFrame:
    """A predicted batch -> cells rows (label, confidence, ``p_<class>``, provenance)."""
    probs = np.asarray(batch["probs"], dtype=np.float32)
    frame = pd.DataFrame({c: batch[c] for c in (*RECORD_COLUMNS, "error")})
    error = frame["error"].astype(str).to_numpy(dtype=object)
    bad_probs = (error == "") & ~np.isfinite(probs).all(axis=1)
    error[bad_probs] = "model produced non-finite probabilities"
    safe = np.where(np.isfinite(probs), probs, 0.0)
    frame["error"] = error
    frame["label"] = np.asarray(run.classes, dtype=object)[safe.argmax(axis=1)]
    frame["confidence"] = safe.max(axis=1)
    frame["needs_review"] = frame["confidence"] < run.cfg.review_threshold
    for j, name in enumerate(run.classes):
        frame[prob_column(name)] = probs[:, j]
    return frame.assign(model=run.meta.model, checkpoint_fingerprint=run.fingerprint,
                        package_version=__version__, scored_at=run.started)


def split_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored cells, quarantine rows with ``reason``) of one sample's predicted rows."""
    ok = rows["error"] == ""
    bad = rows.loc[~ok, [*KEY, "uri", "error"]].rename(columns={"error": "reason"})
    return rows.loc[ok].drop(columns="error").reset_index(drop=True), bad.reset_index(drop=True)


def reconcile(run: Run, inputs: Inputs, skipped: dict[str, int], publisher: Publisher,
              received: int, sent: int) -> dict:
    """Inputs seen == cells written + quarantined + already done, checked twice.

    Once from this run's counters, once by reading the outputs back: every input key must
    have a row for this checkpoint in ``cells/`` or ``quarantine/``, and no key may appear
    twice in one night's cells.
    """
    c = publisher.counts
    accounted = c["cells"] + c["quarantine"] + sum(skipped.values())
    after = read_state(run.layout, run.fingerprint)
    keys = pd.MultiIndex.from_frame(pd.concat([inputs.records[KEY], inputs.rejected[KEY]]))
    missing = keys[~keys.isin(after.done_keys())]
    check = {
        "inputs_seen": inputs.seen,
        "accounted": accounted,
        "rows_sent": sent,
        "rows_received": received,
        "missing_in_outputs": len(missing),
        "duplicate_cells": after.duplicate_cells,
        "examples_missing": [list(k) for k in missing[:5]],
    }
    check["ok"] = bool(accounted == inputs.seen and received == sent and not len(missing)
                       and after.duplicate_cells == 0)
    return check


def _summary(run: Run, inputs: Inputs, skipped: dict[str, int], publisher: Publisher,
             check: dict | None, t0: float, status: str) -> dict:
    c = publisher.counts
    seconds = time.perf_counter() - t0
    return {
        "status": status,
        "run_date": run.run_date,
        "started_at": run.started.isoformat(),
        "seconds": round(seconds, 2),
        "checkpoint": run.cfg.checkpoint,
        "checkpoint_fingerprint": run.fingerprint,
        "model": run.meta.model,
        "classes": list(run.classes),
        "package_version": __version__,
        "input": run.cfg.input,
        "input_kind": inputs.kind,
        "output": run.cfg.output,
        "rescore": run.cfg.rescore,
        "counts": {
            "inputs_seen": inputs.seen,
            "duplicate_rows_ignored": inputs.duplicates,
            **skipped,
            "cells_written": c["cells"],
            "quarantined": c["quarantine"],
            "samples_written": c["samples"],
        },
        "images_per_s": round((c["cells"] + c["quarantine"]) / seconds, 1) if seconds else None,
        "reconciliation": check,
    }


def _write_summary(run: Run, summary: dict) -> None:
    from wbc_ray import storage

    stamp = run.started.strftime("%Y%m%dT%H%M%SZ")
    uri = run.layout.run_summary(run.run_date, stamp)
    storage.write_text(uri, json.dumps(summary, indent=2, default=str))
    summary["summary_uri"] = uri
