"""The plan of one scoring run: what it will score, checked before any Ray work, and the stream.

:func:`plan_run` does every check that needs I/O (the checkpoint resolves and its weights
read, the input exists, the reference ranges name the checkpoint's classes) before Ray is
touched, so a wrong argument fails in seconds with the URI it names; :class:`ScoreConfig`
already checked values and ranges. :func:`predicted_frames` is the one Ray Data stream::

    records (driver, metadata only) -> decode + crop + resize (CPU tasks)
        -> predictor (actor pool; one GPU per actor when the cluster has GPUs)
        -> driver: predicted rows (label, confidence, ``p_<class>``), never pixels

The predictor is a parameter: any ``map_batches`` class built as ``cls(checkpoint=...)``
whose ``__call__`` adds ``probs`` (N, C) to a batch; :data:`RUNTIMES` maps
``ScoreConfig.runtime`` to the project's two.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import ray

from wbc_ray import storage
from wbc_ray.config import ScoreConfig
from wbc_ray.data.dataset import ROWS_PER_BLOCK, decode_dataset
from wbc_ray.models.checkpoint import (
    WEIGHTS,
    CheckpointMeta,
    fingerprint,
    read_meta,
    resolve_checkpoint,
)
from wbc_ray.schema import MAX_PIXELS
from wbc_ray.scoring.inputs import KEY, RECORD_COLUMNS, Inputs
from wbc_ray.scoring.publish import Layout, State, prob_column

# ScoreConfig.runtime -> (module, class, the package it needs); imported only when chosen.
RUNTIMES = {
    "torch": ("wbc_ray.models.predictor", "Predictor", "torch"),
    "onnx": ("wbc_ray.models.onnx_predictor", "OnnxPredictor", "onnxruntime"),
}


@dataclass(frozen=True)
class Run:
    """Everything fixed for one run."""

    cfg: ScoreConfig  # resolved: the checkpoint directory, the run date
    started: pd.Timestamp  # UTC; also the time stamp of every row the run writes
    meta: CheckpointMeta
    fingerprint: str

    @property
    def run_date(self) -> str:
        return self.cfg.run_date

    @property
    def layout(self) -> Layout:
        return Layout(self.cfg.output)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes


def plan_run(cfg: ScoreConfig) -> Run:
    """The run ``cfg`` asks for, with every I/O check done (module docs); no Ray."""
    for name in ("checkpoint", "input", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"score needs --{name}")
    checkpoint = resolve_checkpoint(cfg.checkpoint)  # names the URI when it is no checkpoint
    meta = read_meta(checkpoint)
    try:
        weights = fingerprint(checkpoint)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {checkpoint} has no weights file {WEIGHTS}"
                                ) from None
    storage.check_readable(cfg.input)
    stray = sorted(set(cfg.reference_ranges) - set(meta.classes))
    if stray:
        raise ValueError(f"reference_ranges name {stray}, which the checkpoint {checkpoint} "
                         f"does not predict (its classes: {list(meta.classes)})")
    started = pd.Timestamp.now(tz="UTC").floor("us")
    resolved = replace(cfg, checkpoint=checkpoint,
                       run_date=cfg.run_date or started.date().isoformat())
    return Run(resolved, started, meta, weights)


def predictor_class(runtime: str) -> type:
    """The predictor class of ``runtime`` (:data:`RUNTIMES`), imported now: a missing
    package is reported before Ray starts, not by every model actor."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, got {runtime!r}")
    module, name, package = RUNTIMES[runtime]
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"runtime {runtime!r} needs {package}, which is not installed "
                          "(pip install 'wbc-ray[onnx]' for onnxruntime)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"runtime {runtime!r} needs {module}.{name}: {e}") from e


def pending(inputs: Inputs, state: State, rescore: bool
            ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(records to score, rejects to record, counts of inputs already done) for this run."""
    scored = state.cells.set_index(KEY).index
    quarantined = state.quarantine.set_index(KEY).index.difference(scored)
    skipped = {"already_scored": 0, "already_quarantined": 0}
    if rescore:
        return inputs.records, inputs.rejected, skipped
    rec_keys = pd.MultiIndex.from_frame(inputs.records[KEY])
    rej_keys = pd.MultiIndex.from_frame(inputs.rejected[KEY])
    done_rec = rec_keys.isin(scored), rec_keys.isin(quarantined)
    done_rej = rej_keys.isin(scored), rej_keys.isin(quarantined)
    skipped["already_scored"] = int(done_rec[0].sum() + done_rej[0].sum())
    skipped["already_quarantined"] = int(done_rec[1].sum() + done_rej[1].sum())
    todo = inputs.records.loc[~(done_rec[0] | done_rec[1])].reset_index(drop=True)
    rejects = inputs.rejected.loc[~(done_rej[0] | done_rej[1])].reset_index(drop=True)
    return todo, rejects, skipped


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


def scored_dataset(run: Run, todo: pd.DataFrame, predictor: type) -> ray.data.Dataset:
    """The lazy decode -> predict stream (GPU actors when the cluster has GPUs).

    On CPU-only clusters decode asks for the actors' CPUs so that Ray Data fuses it into
    them: each actor decodes and predicts on its own CPUs, and no CPU idles waiting for
    decode tasks that fusion would never launch.
    """
    if not ray.is_initialized():  # library use: what Ray Data's first call would do
        ray.init()
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]),
                    default=1)
    actors, cpus, gpus = actor_resources(run.cfg.actors, ray.cluster_resources(), node_cpus)
    rows = todo[list(RECORD_COLUMNS)]
    ds = decode_dataset(rows, run.meta.input_size, MAX_PIXELS, num_cpus=1 if gpus else cpus,
                        preprocess=run.meta.preprocess)
    blocks = -(-len(rows) // ROWS_PER_BLOCK)
    return ds.map_batches(
        predictor, fn_constructor_kwargs={"checkpoint": run.cfg.checkpoint},
        batch_size=run.cfg.batch_size, batch_format="numpy", num_gpus=gpus, num_cpus=cpus,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, blocks))))


def predicted_frames(run: Run, todo: pd.DataFrame, predictor: type
                     ) -> Iterator[pd.DataFrame]:
    """:func:`scored_dataset` as it reaches the driver, one :func:`prediction_frame` per
    batch."""
    for batch in scored_dataset(run, todo, predictor).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2):
        yield prediction_frame(run, batch)


def prediction_frame(run: Run, batch: dict[str, np.ndarray]) -> pd.DataFrame:
    """A predicted batch -> the record columns, ``error``, label, confidence, needs_review
    and ``p_<class>``. Non-finite probabilities become an error (the row is quarantined)."""
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
    return frame


def split_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored cells, quarantine rows with ``reason``) of one sample's predicted rows."""
    ok = rows["error"] == ""
    bad = rows.loc[~ok, [*KEY, "uri", "error"]].rename(columns={"error": "reason"})
    return rows.loc[ok].drop(columns="error").reset_index(drop=True), bad.reset_index(drop=True)
