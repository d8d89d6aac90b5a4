"""`wbc-ray tune`: a Ray Tune sweep whose trials are Ray Train runs.

Three layers, as in Ray's own Train + Tune examples: ``worker_loop`` (per worker, in
``training.ray_train``) < :func:`run_trial` (per trial: builds and fits a TorchTrainer) <
:func:`run_sweep` (the Tuner). The data is listed, split and decoded once on the driver;
every trial trains on the same materialized datasets.

Layout under ``<tune.output>/<tune.name>/``::

    config.yaml          the resolved RunConfig the sweep started with
    tune/                Ray Tune's experiment (state used to resume)
    runs/trial_<id>/     each trial's Ray Train run; best weights in best/
    trials.parquet/.csv  one row per trial: params, best val loss (and the val acc of that
                         epoch), epochs run, status (done | stopped | error)
    best_config.yaml     the input config with the best params, for `wbc-ray train`
    best_checkpoint.txt  URI of the best trial's best/ checkpoint
    summary.json         the above in one file
    val_loss.png         validation loss per trial over epochs
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from wbc_ray import storage
from wbc_ray.config import DataConfig, RunConfig, TuneConfig, dump_yaml, to_dict
from wbc_ray.data.prepare import PreparedData, prepare
from wbc_ray.data.sources import find_groups_file, is_manifest, read_table
from wbc_ray.models import get_spec
from wbc_ray.ray_session import init_ray, wait_for_gpus
from wbc_ray.training.ray_train import build_trainer
from wbc_ray.tuning.space import apply_params, grid_size, resolve_space, to_tune, validate_space

log = logging.getLogger(__name__)

METRIC, MODE = "val_loss", "min"
TIME_ATTR = "epochs_done"  # survives a resumed trial, unlike Tune's training_iteration
DRIVER_CPUS = 1  # each trial's driver actor, which runs TorchTrainer.fit
DATA_CPU_SHARE = 0.25  # of the cluster's CPUs, kept free for Ray Data when deriving concurrency
STOP_FILE = "tune_stop"  # in a trial's run directory: ASHA asked the trial to stop


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished; rerunning the same sweep resumes it."""


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: str
    trials: pd.DataFrame  # one row per trial (see module docstring)
    best_trial: str
    best_params: dict[str, Any]
    best_config: RunConfig  # the input config with best_params applied
    best_checkpoint: str  # URI of the best trial's <run_dir>/best
    files: dict[str, str]
    resumed: bool  # True when an interrupted sweep was continued
    seconds: float  # wall time of this call

    def __str__(self) -> str:
        counts = self.trials["status"].value_counts().to_dict()
        row = self.trials.set_index("trial").loc[self.best_trial]
        return (f"{len(self.trials)} trials {counts}; best {self.best_trial}: val loss "
                f"{row['best_val_loss']:.4f}, val acc {row['best_val_acc']:.4f} with "
                f"{self.best_params}\nbest checkpoint: {self.best_checkpoint}\n"
                f"train it fully: wbc-ray train --config {self.files['best_config']}")


class _EpochReport(TuneReportCallback):
    """Forwards each epoch's report to Tune, adding ``epochs_done`` for ASHA's time axis,
    and ends the Train run cleanly once ASHA has asked this trial to stop.

    Runs in the Train controller. ``abort`` is what Ray Train does on Ctrl-C: it removes
    the worker group and its placement group before the controller exits.
    """

    def __init__(self, stop_file: str):
        super().__init__()
        self._stop_file = stop_file

    def after_report(self, run_context, metrics, checkpoint):
        first = {**metrics[0], TIME_ATTR: metrics[0]["epoch"] + 1}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)
        if storage.exists(self._stop_file):
            ray.get_runtime_context().current_actor.abort.remote()


class _GracefulASHA(ASHAScheduler):
    """ASHA whose "stop" lets the trial end its Train run itself.

    Tune stops a trial by killing its actor, which kills the Train controller it owns
    before the controller can remove its workers' placement group. Ray's fallback
    cleaner needs the dashboard's state API (off in local sessions, confused by two local
    Ray instances on one machine), so each stopped trial would leak its workers' CPUs until
    later trials could not be scheduled. Instead the trial is marked and kept running;
    :class:`_EpochReport` aborts its Train run at the next report (one more epoch at most).
    """

    def __init__(self, runs_dir: str, **kwargs):
        super().__init__(**kwargs)
        self._runs_dir = runs_dir

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != self.STOP or result.get("done"):
            return decision
        stop_file = storage.join(self._runs_dir, trial_name(trial), STOP_FILE)
        if not storage.exists(stop_file):
            storage.write_text(stop_file, f"stopped by ASHA after {result[TIME_ATTR]} epochs\n")
        return self.CONTINUE


def trial_name(trial) -> str:
    """Deterministic per trial: a resumed trial finds its Train run under the same name."""
    return f"trial_{trial.trial_id}"


def run_trial(params: dict[str, Any], *, base: RunConfig, data: PreparedData,
              runs_dir: str) -> None:
    """One Tune trial: ``base`` + ``params`` trained as a Ray Train run."""
    cfg = apply_params(base, params)
    name = f"trial_{tune.get_context().get_trial_id()}"
    run_dir = storage.join(runs_dir, name)
    stop_file = storage.join(run_dir, STOP_FILE)
    trainer = build_trainer(cfg, data, run_dir, name, runs_dir,
                            callbacks=[_EpochReport(stop_file)])
    try:
        result = trainer.fit()
    except Exception:
        if storage.exists(stop_file):
            return  # aborted on ASHA's request: a finished trial, not a failed one
        raise
    if result.error:
        raise result.error


def sweep_dir_of(tc: TuneConfig) -> str:
    root = tc.output if storage.is_remote(tc.output) else storage.filesystem(tc.output)[1]
    return storage.join(root, tc.name)


def has_groups(d: DataConfig) -> bool:
    """Whether a group per image is known (a groups CSV, or a manifest ``group`` column)."""
    if d.groups:
        return True
    if not d.data:
        return False
    if is_manifest(d.data):
        table = read_table(d.data)
        return "group" in table and bool(table["group"].notna().all())
    return find_groups_file(d.data) is not None


def tuning_data(d: DataConfig) -> DataConfig:
    """The split to tune on: ``grouped`` when groups are known, so no leak gets selected for."""
    if d.split == "all":
        raise ValueError("data.split 'all' puts every image in test; tuning needs train and "
                         "val (use paper, official or grouped)")
    if d.split == "grouped" or not d.data:
        return d
    if has_groups(d):
        if d.split == "paper":
            log.info("groups found for %s: tuning on the grouped split", d.data)
            return replace(d, split="grouped")
        return d  # official: validation is carved out of TRAIN by group
    log.warning("no groups for %s: tuning on the %r split. Near-duplicate images that cross "
                "train/val reward memorising, so the sweep may select for leakage; pass "
                "--groups CSV for a grouped split", d.data, d.split)
    return d


def _whole_gpus(tc: TuneConfig) -> int:
    if tc.gpus_per_trial < 0 or tc.gpus_per_trial != int(tc.gpus_per_trial):
        raise ValueError(f"tune.gpus_per_trial must be a whole number of GPU workers, "
                         f"got {tc.gpus_per_trial}")
    return int(tc.gpus_per_trial)


def trial_base(cfg: RunConfig, runs_dir: str) -> RunConfig:
    """``cfg`` with the per-trial budget and resources of ``cfg.tune``."""
    tc = cfg.tune
    return replace(cfg, train=replace(
        cfg.train, epochs=tc.max_epochs, gpus=_whole_gpus(tc), workers=tc.workers_per_trial,
        cpus_per_worker=tc.cpus_per_worker, output=runs_dir, name=None))


def max_concurrent(tc: TuneConfig, n_trials: int, resources: dict[str, float]) -> int:
    """``tune.max_concurrent``, or what the cluster's CPUs (less a Data share) and GPUs fit."""
    if tc.max_concurrent is not None:
        if tc.max_concurrent < 1:
            raise ValueError(f"tune.max_concurrent must be >= 1, got {tc.max_concurrent}")
        return tc.max_concurrent
    gpus = _whole_gpus(tc)
    cpus = resources.get("CPU", 0.0)
    fits = [n_trials, math.floor((cpus - max(1.0, DATA_CPU_SHARE * cpus)) / _trial_cpus(tc))]
    if gpus:
        fits.append(math.floor(resources.get("GPU", 0.0) / gpus))
    return max(1, min(fits))


def _trial_cpus(tc: TuneConfig) -> int:
    """CPUs one trial holds: its driver plus its Train workers."""
    return DRIVER_CPUS + (_whole_gpus(tc) or tc.workers_per_trial) * tc.cpus_per_worker


def _local_cpus(tc: TuneConfig, num_cpus: int | None) -> int | None:
    """Logical CPUs for a local Ray: at least one trial plus two for Ray Data.

    On a 2-core machine a trial's driver and worker would otherwise take every logical
    CPU, and the worker group waits forever for Ray Data (see RAY_NOTES.md). The driver
    mostly waits, so logical CPUs above the core count are safe.
    """
    if num_cpus is not None or ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return num_cpus
    return max(os.cpu_count() or 1, _trial_cpus(tc) + 2)


def _check_capacity(tc: TuneConfig, resources: dict[str, float]) -> None:
    cpus = resources.get("CPU", 0.0)
    if cpus < _trial_cpus(tc) + 1:
        log.warning("the Ray cluster has %g CPUs but a trial holds %d (driver + workers) and "
                    "Ray Data needs at least 1 more: trials may wait forever unless the "
                    "cluster scales up", cpus, _trial_cpus(tc))


def _basic(seed: int, concurrency: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # A SearchAlgorithm, not a Searcher: Tune ignores max_concurrent_trials for it.
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def _optuna(seed: int, concurrency: int):
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("tune.searcher 'optuna' needs the optuna package: "
                         "pip install 'wbc-ray[optuna]' (or use random or grid)") from None
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrency)


SEARCHERS = {"random": _basic, "grid": _basic, "optuna": _optuna}


def check_tune_config(tc: TuneConfig) -> None:
    """Cheap checks, before any data is decoded."""
    if tc.max_epochs < 1 or tc.grace_period < 1:
        raise ValueError(f"tune.max_epochs and tune.grace_period must be >= 1, got "
                         f"{tc.max_epochs} and {tc.grace_period}")
    if tc.searcher not in SEARCHERS:
        raise ValueError(f"unknown tune.searcher {tc.searcher!r}; "
                         f"choose one of {sorted(SEARCHERS)}")
    if tc.workers_per_trial < 1 or tc.cpus_per_worker < 1:
        raise ValueError(f"tune.workers_per_trial and tune.cpus_per_worker must be >= 1, got "
                         f"{tc.workers_per_trial} and {tc.cpus_per_worker}")
    _whole_gpus(tc)
    SEARCHERS[tc.searcher](tc.seed, 1)  # e.g. optuna not installed


def _tune_config(tc: TuneConfig, n_trials: int, concurrency: int, runs_dir: str
                 ) -> tune.TuneConfig:
    # stop_last_trials=False: a trial that reaches max_epochs ends on its own, cleanly.
    scheduler = _GracefulASHA(runs_dir, time_attr=TIME_ATTR, max_t=tc.max_epochs,
                              grace_period=min(tc.grace_period, tc.max_epochs),
                              stop_last_trials=False)
    return tune.TuneConfig(
        metric=METRIC, mode=MODE, search_alg=SEARCHERS[tc.searcher](tc.seed, concurrency),
        scheduler=scheduler, num_samples=1 if tc.searcher == "grid" else n_trials,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name)


def count_trials(tc: TuneConfig, space: dict[str, Any]) -> int:
    if tc.searcher != "grid":
        if tc.trials < 1:
            raise ValueError(f"tune.trials must be >= 1, got {tc.trials}")
        return tc.trials
    n = grid_size(space)
    if n > tc.trials:
        raise ValueError(f"the grid over {sorted(space)} has {n} points but tune.trials is "
                         f"{tc.trials}; raise --trials to {n} or narrow tune.space")
    return n


def _check_resume(sweep_dir: str, cfg: RunConfig) -> None:
    """A resumed sweep keeps its original space and settings: say so when they differ."""
    saved_uri = storage.join(sweep_dir, "config.yaml")
    if not storage.exists(saved_uri):
        return
    import yaml

    saved, now = yaml.safe_load(storage.read_text(saved_uri)), to_dict(cfg)
    changed = sorted(f"{s}.{k}" for s in now for k in now[s]
                     if saved.get(s, {}).get(k) != now[s][k])
    if changed:
        log.warning("resuming %s with the settings it started with; ignoring changes to %s "
                    "(use another --name for a new sweep)", sweep_dir, ", ".join(changed))


def _make_tuner(cfg: RunConfig, space: dict[str, Any], trainable, sweep_dir: str,
                n_trials: int, callbacks: Sequence[tune.Callback]) -> tuple[tune.Tuner, bool]:
    fs, path = storage.pyarrow_filesystem(sweep_dir)
    exp_path = f"{path.rstrip('/')}/tune"
    if tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        log.info("resuming the sweep in %s", sweep_dir)
        _check_resume(sweep_dir, cfg)
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True,
                                  storage_filesystem=fs), True
    storage.write_text(storage.join(sweep_dir, "config.yaml"), dump_yaml(cfg))
    concurrency = max_concurrent(cfg.tune, n_trials, ray.cluster_resources())
    log.info("sweep of %d trials, at most %d at a time, in %s", n_trials, concurrency, sweep_dir)
    run_config = tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs,
                                callbacks=list(callbacks) or None, verbose=1)
    tuner = tune.Tuner(trainable, param_space=to_tune(space, cfg.tune.searcher),
                       tune_config=_tune_config(cfg.tune, n_trials, concurrency,
                                                storage.join(sweep_dir, "runs")),
                       run_config=run_config)
    return tuner, False


def run_sweep(cfg: RunConfig, num_cpus: int | None = None, *,
              callbacks: Sequence[tune.Callback] = ()) -> SweepResult:
    """Tune ``cfg.tune.space`` (over the default space) with ASHA on validation loss.

    Rerunning with the same ``tune.output`` and ``tune.name`` resumes an interrupted sweep
    without redoing finished trials, retries errored ones, and rewrites the outputs.
    ``callbacks`` are Tune callbacks (e.g. experiment loggers); a resumed sweep keeps the
    callbacks it started with. Raises :class:`SweepInterrupted` when stopped early.
    """
    t0 = time.perf_counter()
    tc = cfg.tune
    check_tune_config(tc)
    cfg = replace(cfg, data=tuning_data(cfg.data))
    space = resolve_space(tc.space)
    validate_space(space, cfg)
    n_trials = count_trials(tc, space)
    init_ray(_local_cpus(tc, num_cpus))
    _check_capacity(tc, ray.cluster_resources())
    if _whole_gpus(tc):
        wait_for_gpus(_whole_gpus(tc), cfg.train.gpu_wait_s)
    sweep_dir = sweep_dir_of(tc)
    runs_dir = storage.join(sweep_dir, "runs")
    data = prepare(cfg.data, cfg.model.input_size or get_spec(cfg.model.name).input_size)
    if data.counts["train"] == 0 or data.counts["val"] == 0:
        raise ValueError(f"empty train or validation split: {data.counts}")
    log.info("data %s (%s split): %s", cfg.data.data, cfg.data.split, data.counts)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=trial_base(cfg, runs_dir), data=data,
                             runs_dir=runs_dir),
        {"CPU": DRIVER_CPUS})
    tuner, resumed = _make_tuner(cfg, space, trainable, sweep_dir, n_trials, callbacks)
    grid = tuner.fit()
    finished = grid.num_terminated + grid.num_errors
    if len(grid) < n_trials or finished < len(grid):
        raise SweepInterrupted(f"sweep {sweep_dir} stopped with {finished} of {n_trials} trials "
                               f"finished; rerun the same command to resume it")
    trials = trials_table(grid, list(space), runs_dir, tc.max_epochs)
    return _finish(cfg, trials, sweep_dir, resumed, time.perf_counter() - t0)


def _history(result) -> pd.DataFrame:
    df = result.metrics_dataframe
    if df is None or df.empty or "epoch" not in df:
        return pd.DataFrame(columns=["epoch", "val_loss", "val_acc"])
    # A resumed trial may repeat an epoch it reported before the interruption.
    return df.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


@dataclass(frozen=True)
class Trials:
    table: pd.DataFrame  # one row per trial, sorted by trial name
    params: dict[str, dict[str, Any]]  # trial -> its sampled params, as Tune gave them
    histories: dict[str, pd.DataFrame]  # trial -> one row per epoch


def trials_table(grid, keys: list[str], runs_dir: str, max_epochs: int) -> Trials:
    """One row per trial of a finished ``ResultGrid``, plus params and histories."""
    rows, params, histories = [], {}, {}
    for result in grid:
        name = result.path.rstrip("/").rsplit("/", 1)[-1]
        h = histories[name] = _history(result)
        params[name] = {k: result.config.get(k) for k in keys}
        best = h.loc[h["val_loss"].idxmin()] if len(h) else None
        status = ("error" if result.error else
                  "done" if len(h) >= max_epochs else "stopped")
        run_dir = storage.join(runs_dir, name)
        rows.append({
            "trial": name,
            **params[name],
            "best_val_loss": float(best["val_loss"]) if best is not None else math.nan,
            "best_val_acc": float(best["val_acc"]) if best is not None else math.nan,
            "best_epoch": int(best["epoch"]) if best is not None else None,
            "epochs_run": len(h),
            "status": status,
            "error": repr(result.error) if result.error else None,
            "run_dir": run_dir,
            "best_checkpoint": storage.join(run_dir, "best") if best is not None else None,
        })
    table = pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)
    for k in keys:  # e.g. hidden: 64 or [128, 64]; one type per column for Parquet
        if any(isinstance(v, list | tuple | dict) for v in table[k]):
            table[k] = table[k].map(json.dumps)
    return Trials(table, params, histories)


def _finish(cfg: RunConfig, trials: Trials, sweep_dir: str, resumed: bool,
            seconds: float) -> SweepResult:
    """Pick the best trial and write the sweep's outputs."""
    table = trials.table
    ok = table[(table["status"] != "error") & table["best_val_loss"].notna()]
    if ok.empty:
        errors = table["error"].dropna()
        raise RuntimeError(f"all {len(table)} trials of {sweep_dir} failed; first error: "
                           f"{errors.iloc[0] if len(errors) else 'none recorded'}")
    best = ok.loc[ok["best_val_loss"].idxmin()]
    best_params = trials.params[best["trial"]]
    best_config = apply_params(cfg, best_params)  # validated as `wbc-ray train` will
    files = {"trials_parquet": storage.join(sweep_dir, "trials.parquet"),
             "trials_csv": storage.join(sweep_dir, "trials.csv"),
             "best_config": storage.join(sweep_dir, "best_config.yaml"),
             "best_checkpoint": storage.join(sweep_dir, "best_checkpoint.txt"),
             "summary": storage.join(sweep_dir, "summary.json"),
             "plot": storage.join(sweep_dir, "val_loss.png")}
    storage.write_bytes(files["trials_parquet"], table.to_parquet(index=False))
    storage.write_text(files["trials_csv"], table.to_csv(index=False))
    storage.write_text(files["best_config"], dump_yaml(best_config))
    storage.write_text(files["best_checkpoint"], f"{best['best_checkpoint']}\n")
    with storage.local_copy_for_write(files["plot"]) as local:
        plot_val_loss(trials.histories, best["trial"], local,
                      f"{cfg.model.name}: {len(table)} trials ({cfg.data.split} split)")
    summary = {"sweep_dir": sweep_dir, "best_trial": best["trial"], "best_params": best_params,
               "best_val_loss": float(best["best_val_loss"]),
               "best_val_acc": float(best["best_val_acc"]),
               "best_checkpoint": best["best_checkpoint"], "split": cfg.data.split,
               "searcher": cfg.tune.searcher, "max_epochs": cfg.tune.max_epochs,
               "trials": int(len(table)),
               "status": table["status"].value_counts().to_dict(), "resumed": resumed,
               "seconds": seconds, "files": files}
    storage.write_text(files["summary"], json.dumps(summary, indent=2, default=str))
    log.info("best trial %s: val loss %.4f with %s", best["trial"], best["best_val_loss"],
             best_params)
    return SweepResult(sweep_dir, table, best["trial"], best_params, best_config,
                       best["best_checkpoint"], files, resumed, seconds)


def plot_val_loss(histories: dict[str, pd.DataFrame], best: str, path: str, title: str) -> str:
    """Validation loss per trial over epochs; the best trial drawn thick."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, h in sorted(histories.items()):
        if len(h):
            ax.plot(h["epoch"], h["val_loss"], "-o", markersize=3,
                    linewidth=2.5 if name == best else 1.0, alpha=1.0 if name == best else 0.6,
                    label=f"{name} (best)" if name == best else name)
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Validation loss")
    ax.grid(alpha=0.3)
    if len(histories) <= 12:
        ax.legend(fontsize="small")
    ax.set_title(title)
    fig.savefig(path, dpi=120)
    return path
