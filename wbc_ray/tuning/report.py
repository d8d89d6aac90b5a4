"""A finished sweep's outputs: the trials table, the best config and checkpoint, the plot.

Files written under the sweep directory (see ``docs/TUNE.md``)::

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from wbc_ray import storage
from wbc_ray.config import RunConfig, dump_yaml
from wbc_ray.tuning.space import apply_params

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Trials:
    table: pd.DataFrame  # one row per trial, sorted by trial name
    params: dict[str, dict[str, Any]]  # trial -> its sampled params, as Tune gave them
    histories: dict[str, pd.DataFrame]  # trial -> one row per epoch


def history(metrics: pd.DataFrame | None) -> pd.DataFrame:
    """One row per epoch of a trial's reported metrics."""
    if metrics is None or metrics.empty or "epoch" not in metrics:
        return pd.DataFrame(columns=["epoch", "val_loss", "val_acc"])
    # A resumed trial may repeat an epoch it reported before the interruption.
    return (metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
            .reset_index(drop=True))


def trials_table(grid: Iterable, keys: list[str], runs_dir: str, max_epochs: int) -> Trials:
    """One row per trial of a finished ``ResultGrid`` (``path``, ``config``, ``error``,
    ``metrics_dataframe`` per result), plus params and histories."""
    rows, params, histories = [], {}, {}
    for result in grid:
        name = result.path.rstrip("/").rsplit("/", 1)[-1]
        h = histories[name] = history(result.metrics_dataframe)
        params[name] = {k: result.config.get(k) for k in keys}
        best = h.loc[h["val_loss"].idxmin()] if len(h) else None
        run_dir = storage.join(runs_dir, name)
        rows.append({
            "trial": name,
            **params[name],
            "best_val_loss": float(best["val_loss"]) if best is not None else math.nan,
            "best_val_acc": float(best["val_acc"]) if best is not None else math.nan,
            "best_epoch": int(best["epoch"]) if best is not None else None,
            "epochs_run": len(h),
            "status": ("error" if result.error else
                       "done" if len(h) >= max_epochs else "stopped"),
            "error": repr(result.error) if result.error else None,
            "run_dir": run_dir,
            "best_checkpoint": storage.join(run_dir, "best") if best is not None else None,
        })
    table = pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)
    for k in keys:  # e.g. hidden: 64 or [128, 64]; one type per column for Parquet
        if any(isinstance(v, list | tuple | dict) for v in table[k]):
            table[k] = table[k].map(json.dumps)
    return Trials(table, params, histories)


def output_files(sweep_dir: str) -> dict[str, str]:
    names = {"trials_parquet": "trials.parquet", "trials_csv": "trials.csv",
             "best_config": "best_config.yaml", "best_checkpoint": "best_checkpoint.txt",
             "summary": "summary.json", "plot": "val_loss.png"}
    return {k: storage.join(sweep_dir, v) for k, v in names.items()}


def write_report(cfg: RunConfig, trials: Trials, sweep_dir: str, resumed: bool,
                 seconds: float) -> SweepResult:
    """Pick the trial with the lowest validation loss and write the sweep's outputs."""
    table = trials.table
    ok = table[(table["status"] != "error") & table["best_val_loss"].notna()]
    if ok.empty:
        errors = table["error"].dropna()
        raise RuntimeError(f"all {len(table)} trials of {sweep_dir} failed; first error: "
                           f"{errors.iloc[0] if len(errors) else 'none recorded'}")
    best = ok.loc[ok["best_val_loss"].idxmin()]
    best_params = trials.params[best["trial"]]
    best_config = apply_params(cfg, best_params)  # validated as `wbc-ray train` will
    files = output_files(sweep_dir)
    storage.write_parquet(files["trials_parquet"], table)
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
