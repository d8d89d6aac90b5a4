"""One Tune trial: the base config plus sampled params, trained as a Ray Train run.

A function trainable that builds and fits a TorchTrainer (in Ray 2.60, Train V2,
``Tuner(TorchTrainer(...))`` raises "Improper 'run'" in Ray 2.60).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ray import tune

from wbc_ray import storage
from wbc_ray.config import RunConfig
from wbc_ray.data.prepare import PreparedData
from wbc_ray.training.ray_train import build_trainer
from wbc_ray.tuning.ray_compat import EpochReport, stop_file
from wbc_ray.tuning.resources import trial_resources, whole_gpus
from wbc_ray.tuning.space import apply_params


def trial_base(cfg: RunConfig, runs_dir: str) -> RunConfig:
    """``cfg`` with the per-trial budget and resources of ``cfg.tune``."""
    tc = cfg.tune
    return replace(cfg, train=replace(
        cfg.train, epochs=tc.max_epochs, gpus=whole_gpus(tc), workers=tc.workers_per_trial,
        cpus_per_worker=tc.cpus_per_worker, output=runs_dir, name=None))


def run_trial(params: dict[str, Any], *, base: RunConfig, data: PreparedData,
              runs_dir: str) -> None:
    """One Tune trial: ``base`` + ``params`` trained as a Ray Train run."""
    cfg = apply_params(base, params)
    name = f"trial_{tune.get_context().get_trial_id()}"
    run_dir = storage.join(runs_dir, name)
    stop = stop_file(runs_dir, name)
    trainer = build_trainer(cfg, data, run_dir, name, runs_dir, callbacks=[EpochReport(stop)])
    try:
        result = trainer.fit()
    except Exception:
        if storage.exists(stop):
            return  # aborted on ASHA's request: a finished trial, not a failed one
        raise
    if result.error:
        raise result.error


def trainable(cfg: RunConfig, data: PreparedData, runs_dir: str):
    """The Tune trainable: :func:`run_trial` bound to the shared data and the trial base."""
    return tune.with_resources(
        tune.with_parameters(run_trial, base=trial_base(cfg, runs_dir), data=data,
                             runs_dir=runs_dir),
        trial_resources())
