"""`wbc-ray tune`: a Ray Tune sweep whose trials are Ray Train runs.

Three layers, as in Ray's own Train + Tune examples: ``worker_loop`` (per worker, in
``training.ray_train``) < :func:`~wbc_ray.tuning.trial.run_trial` (per trial: builds and
fits a TorchTrainer) < :func:`run_sweep` (the Tuner). The data is listed, split and decoded
once on the driver; every trial trains on the same materialized datasets.

Layout under ``<tune.output>/<tune.name>/``::

    config.yaml          the resolved RunConfig the sweep started with
    tune/                Ray Tune's experiment (state used to resume)
    runs/trial_<id>/     each trial's Ray Train run; best weights in best/
    ...                  the report: see :mod:`wbc_ray.tuning.report`
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray
from ray import tune

from wbc_ray import storage, tracking
from wbc_ray.config import RunConfig, TuneConfig, dump_yaml, load_yaml, to_dict
from wbc_ray.data.prepare import prepare
from wbc_ray.models import get_spec
from wbc_ray.ray_session import wait_for_gpus
from wbc_ray.tuning import resources
from wbc_ray.tuning.ray_compat import check_ray_version
from wbc_ray.tuning.report import SweepResult, trials_table, write_report
from wbc_ray.tuning.search import check_tune_config, count_trials, to_tune, tune_config
from wbc_ray.tuning.space import resolve_space, validate_space
from wbc_ray.tuning.split import tuning_data
from wbc_ray.tuning.trial import trainable

log = logging.getLogger(__name__)


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished; rerunning the same sweep resumes it."""


def sweep_dir_of(tc: TuneConfig) -> str:
    root = tc.output if storage.is_remote(tc.output) else storage.filesystem(tc.output)[1]
    return storage.join(root, tc.name)


def check_resume(sweep_dir: str, cfg: RunConfig) -> list[str]:
    """A resumed sweep keeps its original space and settings: warn about, and return, the
    dotted keys that differ from the ``config.yaml`` it started with."""
    saved_uri = storage.join(sweep_dir, "config.yaml")
    if not storage.exists(saved_uri):
        return []
    saved, now = load_yaml(storage.read_text(saved_uri)) or {}, to_dict(cfg)
    changed = sorted(f"{s}.{k}" for s in now for k in now[s]
                     if saved.get(s, {}).get(k) != now[s][k])
    if changed:
        log.warning("resuming %s with the settings it started with; ignoring changes to %s "
                    "(use another --name for a new sweep)", sweep_dir, ", ".join(changed))
    return changed


def _make_tuner(cfg: RunConfig, space: dict[str, Any], fn, sweep_dir: str, n_trials: int,
                callbacks: Sequence[tune.Callback]) -> tuple[tune.Tuner, bool]:
    """The restored Tuner when ``sweep_dir`` holds one, else a new one; and whether resumed."""
    fs, path = storage.pyarrow_filesystem(sweep_dir)
    exp_path = f"{path.rstrip('/')}/tune"
    if tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        log.info("resuming the sweep in %s", sweep_dir)
        check_resume(sweep_dir, cfg)
        return tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True,
                                  storage_filesystem=fs), True
    storage.write_text(storage.join(sweep_dir, "config.yaml"), dump_yaml(cfg))
    concurrency = resources.max_concurrent(cfg.tune, n_trials, ray.cluster_resources())
    log.info("sweep of %d trials, at most %d at a time, in %s", n_trials, concurrency, sweep_dir)
    run_config = tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs,
                                callbacks=list(callbacks) or None, verbose=1)
    settings = tune_config(cfg.tune, n_trials, concurrency, storage.join(sweep_dir, "runs"))
    return tune.Tuner(fn, param_space=to_tune(space, cfg.tune.searcher), tune_config=settings,
                      run_config=run_config), False


def run_sweep(cfg: RunConfig, *, callbacks: Sequence[tune.Callback] = ()) -> SweepResult:
    """Tune ``cfg.tune.space`` (over the default space) with ASHA on validation loss.

    Ray must already be running: the entry point calls ``wbc_ray.ray_session.init_ray``
    once (locally with at least :func:`~wbc_ray.tuning.resources.local_cpus` CPUs). When
    ``tune.gpus_per_trial`` is set, waits up to ``train.gpu_wait_s`` for the GPUs.

    Rerunning with the same ``tune.output`` and ``tune.name`` resumes an interrupted sweep
    without redoing finished trials, retries errored ones, and rewrites the outputs.
    ``callbacks`` are Tune callbacks (e.g. experiment loggers); a resumed sweep keeps the
    callbacks it started with. Raises :class:`SweepInterrupted` when stopped early.

    Tracked in MLflow (``cfg.tracking``, :mod:`wbc_ray.tracking`): one run for the sweep
    (config, report, best checkpoint), a child run per trial; a resumed sweep continues them.
    """
    t0 = time.perf_counter()
    check_ray_version()
    tc = cfg.tune
    check_tune_config(tc)
    cfg = replace(cfg, data=tuning_data(cfg.data))
    space = resolve_space(tc.space, cfg.model.name)
    validate_space(space, cfg)
    n_trials = count_trials(tc, space)
    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs a running Ray: call "
                           "wbc_ray.ray_session.init_ray() first, once, at the entry point")
    resources.check_capacity(tc, ray.cluster_resources())
    if resources.whole_gpus(tc):
        wait_for_gpus(resources.whole_gpus(tc), cfg.train.gpu_wait_s)
    sweep_dir = sweep_dir_of(tc)
    with tracking.start_run(cfg.tracking, command="tune", run_dir=sweep_dir, name=tc.name,
                            params=to_dict(cfg), tags={"wbc_ray.model": cfg.model.name}) as run:
        result = _sweep(cfg, space, n_trials, sweep_dir, [
            *callbacks, *tracking.trial_logger(run, cfg.tracking, sweep_dir)], t0)
        log_sweep(run, result)
    return result


def _sweep(cfg: RunConfig, space: dict[str, Any], n_trials: int, sweep_dir: str,
           callbacks: Sequence[tune.Callback], t0: float) -> SweepResult:
    tc = cfg.tune
    runs_dir = storage.join(sweep_dir, "runs")
    data = prepare(cfg.data, cfg.model.input_size or get_spec(cfg.model.name).input_size,
                   to_dict(cfg.preprocess))
    if data.counts["train"] == 0 or data.counts["val"] == 0:
        raise ValueError(f"empty train or validation split: {data.counts}")
    log.info("data %s (%s split): %s", cfg.data.data, cfg.data.split, data.counts)
    tuner, resumed = _make_tuner(cfg, space, trainable(cfg, data, runs_dir), sweep_dir,
                                 n_trials, callbacks)
    grid = tuner.fit()
    finished = grid.num_terminated + grid.num_errors
    if len(grid) < n_trials or finished < len(grid):
        raise SweepInterrupted(f"sweep {sweep_dir} stopped with {finished} of {n_trials} trials "
                               f"finished; rerun the same command to resume it")
    trials = trials_table(grid, list(space), runs_dir, tc.max_epochs)
    return write_report(cfg, trials, sweep_dir, resumed, time.perf_counter() - t0)


def log_sweep(run: tracking.Run, result: SweepResult) -> None:
    """The sweep's outcome on its MLflow run: best scores, the report, the best checkpoint."""
    best = result.trials.set_index("trial").loc[result.best_trial]
    run.set_tags({"wbc_ray.best_trial": result.best_trial,
                  "wbc_ray.best_params": json.dumps(result.best_params, default=str)})
    run.log_metrics({"best_val_loss": best["best_val_loss"],
                     "best_val_acc": best["best_val_acc"], "trials": len(result.trials),
                     "seconds": result.seconds})
    for key, uri in result.files.items():
        if key != "trials_parquet":  # trials.csv holds the same table
            run.log_artifact(uri)
    run.log_artifact(result.best_checkpoint, "best")
