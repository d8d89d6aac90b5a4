"""`wbc-ray train`: prepare data, fit under Ray Train, write the run's artefacts, evaluate."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace

import pandas as pd

from wbc_ray import storage, tracking
from wbc_ray.config import RunConfig, dump_yaml, to_dict
from wbc_ray.console import say
from wbc_ray.data.dataset import Quarantine
from wbc_ray.data.prepare import prepare
from wbc_ray.evaluation.metrics import compute_metrics, plot_curves
from wbc_ray.evaluation.run import predict, write_report
from wbc_ray.models import get_spec
from wbc_ray.ray_session import wait_for_gpus
from wbc_ray.training.ray_train import TrainHooks, TrainResult, fit

log = logging.getLogger(__name__)


def run_name(cfg: RunConfig) -> str:
    return cfg.train.name or f"{cfg.model.name}-{cfg.data.split}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir_of(cfg: RunConfig) -> str:
    root = cfg.train.output
    if not storage.is_remote(root):
        root = storage.filesystem(root)[1]  # absolute: workers may run elsewhere
    return storage.join(root, run_name(cfg))


@dataclass(frozen=True)
class TrainOutcome:
    result: TrainResult
    test_metrics: dict | None
    files: dict[str, str]


def train(cfg: RunConfig, evaluate_test: bool = True, hooks: TrainHooks | None = None
          ) -> TrainOutcome:
    """Train ``cfg`` end to end. Rerunning with the same ``train.name`` resumes the run.

    Tracked in MLflow (``cfg.tracking``, see :mod:`wbc_ray.tracking`): the run is opened
    before any data is read, so an unusable tracking store fails in seconds."""
    if cfg.train.gpus > 0:
        wait_for_gpus(cfg.train.gpus, cfg.train.gpu_wait_s)
    cfg = replace(cfg, train=replace(cfg.train, name=run_name(cfg)))
    run_dir = run_dir_of(cfg)
    with tracking.start_run(cfg.tracking, command="train", run_dir=run_dir,
                            name=cfg.train.name, params=to_dict(cfg),
                            tags={"wbc_ray.model": cfg.model.name}) as run:
        outcome = _train(cfg, run_dir, evaluate_test, hooks, run)
        log_outcome(run, outcome)
    return outcome


def _train(cfg: RunConfig, run_dir: str, evaluate_test: bool, hooks: TrainHooks | None,
           run: tracking.Run) -> TrainOutcome:
    data = prepare(cfg.data, cfg.model.input_size or get_spec(cfg.model.name).input_size,
                   to_dict(cfg.preprocess))
    log.info("data %s: %s", cfg.data.data, data.counts)
    c = data.counts
    extra = "".join(f", {c[k]} {k.replace('_', ' ')}" for k in ("quarantined", "not_located")
                    if c.get(k))
    say(f"training {cfg.model.name} on {cfg.data.data} ({cfg.data.split} split): "
        f"{c['train']} train / {c['val']} val / {c['test']} test images{extra} -> {run_dir}")
    storage.write_text(storage.join(run_dir, "config.yaml"), dump_yaml(cfg))
    storage.write_text(storage.join(run_dir, "data.json"),
                       json.dumps({"counts": data.counts, "fingerprint": data.fingerprint,
                                   "classes": list(data.classes)}, indent=2))
    Quarantine(data.quarantine).write(run_dir)
    run.set_tags({"wbc_ray.data_fingerprint": data.fingerprint})
    result = fit(cfg, data, run_dir, hooks=hooks, callbacks=run.epoch_logger())
    files = write_history(result.history, run_dir, f"{cfg.model.name} ({cfg.data.split} split)")
    test_metrics = None
    if evaluate_test and data.counts["test"] > 0:
        labels, probs = predict(data.datasets["test"], result.best_checkpoint)
        test_metrics = compute_metrics(labels, probs, data.classes)
        test_metrics.update({"split": cfg.data.split, "part": "test", "counts": data.counts,
                             "epochs_run": len(result.history), "train_seconds": result.seconds})
        out = storage.join(run_dir, "eval-test")
        files.update(write_report(test_metrics, out, f"{cfg.model.name}: test split "
                                                     f"({cfg.data.split})"))
    return TrainOutcome(result, test_metrics, files)


def log_outcome(run: tracking.Run, outcome: TrainOutcome) -> None:
    """What the live epoch logging missed, the test metrics, and the run's files."""
    r = outcome.result
    run.log_history(r.history)
    run.log_metrics({"train_seconds": r.seconds, "epochs_run": len(r.history),
                     "counts": r.counts, **({"test": _scores(outcome.test_metrics)}
                                            if outcome.test_metrics else {})})
    for name in ("config.yaml", "data.json"):
        run.log_artifact(storage.join(r.run_dir, name))
    for key in ("history", "curves"):
        run.log_artifact(outcome.files[key])
    if outcome.test_metrics:
        run.log_artifact(storage.join(r.run_dir, "eval-test"), "eval-test")
    run.log_artifact(r.best_checkpoint, "best")


def _scores(metrics: dict) -> dict:
    """The headline numbers of a metrics dict (not the split's counts or run times)."""
    return {k: metrics[k] for k in ("accuracy", "macro", "weighted", "per_class", "ece",
                                    "roc_auc_ovr") if k in metrics}


def write_history(history: list[dict], run_dir: str, title: str) -> dict[str, str]:
    """history.csv + curves.png (loss and accuracy per epoch, like the paper's Figs. 4-5)."""
    csv = storage.join(run_dir, "history.csv")
    storage.write_text(csv, pd.DataFrame(history).to_csv(index=False))
    png = storage.join(run_dir, "curves.png")
    with storage.local_copy_for_write(png) as local:
        plot_curves(history, local, title)
    return {"history": csv, "curves": png}
