"""`wbc-ray evaluate`: a checkpoint on any labelled folder, bucket or held-out split part."""

from __future__ import annotations

import posixpath
from dataclasses import replace

from wbc_ray import tracking
from wbc_ray.config import DataConfig, TrackingConfig, to_dict
from wbc_ray.evaluation.run import evaluate_checkpoint, report_paths
from wbc_ray.models.checkpoint import read_meta


def evaluate(checkpoint: str, data: str, split: str = "all", part: str = "test",
             groups: str | None = None, output: str = "runs/eval",
             tracking_config: TrackingConfig | None = None) -> dict:
    """``wbc-ray evaluate``: with a split protocol, its seed and fractions come from the
    checkpoint's own config, so the test part is the one held out during training.

    Tracked in MLflow (:mod:`wbc_ray.tracking`; default: on, a store beside ``output``):
    the data settings and checkpoint as params, the metrics, and the report files."""
    meta = read_meta(checkpoint)
    trained = meta.config.get("data", {})
    base = DataConfig(data=data, split=split, groups=groups)
    if split != "all":
        base = replace(base, seed=trained.get("seed", 0),
                       fractions=tuple(trained.get("fractions", base.fractions)),
                       groups=groups or trained.get("groups"),
                       limit_per_class=trained.get("limit_per_class"))
    part = part if split != "all" else "test"
    params = {"checkpoint": checkpoint, "part": part, "model": meta.model,
              "data": to_dict(base)}
    tags = {"wbc_ray.model": meta.model, "wbc_ray.checkpoint_epoch": meta.epoch,
            "wbc_ray.data_fingerprint": meta.data_fingerprint}
    with tracking.start_run(tracking_config or TrackingConfig(), command="evaluate",
                            run_dir=output, name=posixpath.basename(output.rstrip("/")),
                            params=params, tags=tags, resume=False) as run:
        metrics = evaluate_checkpoint(checkpoint, base, output, part=part)
        run.log_metrics({k: metrics[k] for k in ("n", "accuracy", "macro", "weighted",
                                                 "per_class", "ece", "roc_auc_ovr")
                         if k in metrics})
        for path in report_paths(output).values():
            run.log_artifact(path)
    return metrics
