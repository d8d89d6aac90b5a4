"""Score a labelled dataset with a checkpoint and write metrics.json, Markdown and PNGs."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import numpy as np
import ray

from wbc_ray import storage
from wbc_ray.config import DataConfig
from wbc_ray.data.prepare import prepare
from wbc_ray.evaluation.metrics import compute_metrics, metrics_markdown, plot_confusion
from wbc_ray.models.checkpoint import read_meta
from wbc_ray.models.predictor import Predictor

log = logging.getLogger(__name__)


def predict(ds: ray.data.Dataset, checkpoint: str, batch_size: int = 256,
            actors: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) for a dataset of ``image``/``label_idx`` rows."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    out = ds.map_batches(Predictor, fn_constructor_kwargs={"checkpoint": checkpoint},
                         batch_size=batch_size, batch_format="numpy", num_gpus=gpus,
                         compute=ray.data.ActorPoolStrategy(size=actors))
    labels, probs = [], []
    for batch in out.select_columns(["label_idx", "probs"]).iter_batches(batch_size=4096):
        labels.append(batch["label_idx"])
        probs.append(batch["probs"])
    if not labels:
        raise ValueError("nothing to evaluate: the selected split is empty")
    return np.concatenate(labels).astype(int), np.concatenate(probs)


def report_paths(output: str) -> dict[str, str]:
    """Where :func:`write_report` writes under ``output``."""
    return {k: storage.join(output, n) for k, n in
            (("json", "metrics.json"), ("markdown", "metrics.md"),
             ("confusion", "confusion_matrix.png"))}


def write_report(metrics: dict, output: str, title: str) -> dict[str, str]:
    """metrics.json, metrics.md and confusion_matrix.png under ``output``."""
    paths = report_paths(output)
    storage.write_text(paths["json"], json.dumps(metrics, indent=2))
    text = metrics_markdown(metrics, title)
    if metrics.get("excluded_classes"):
        left_out = ", ".join(f"{k} ({v} images)" for k, v in metrics["excluded_classes"].items())
        text += (f"\nExcluded (classes the checkpoint does not know, quarantined): "
                 f"{left_out}.\n")
    storage.write_text(paths["markdown"], text)
    with storage.local_copy_for_write(paths["confusion"]) as local:
        plot_confusion(metrics, local, title)
    return paths


def excluded_classes(quarantine) -> dict[str, int]:
    """Class folders the checkpoint does not know (e.g. LISC's BASOPHIL) -> images left out."""
    reasons = quarantine["reason"] if len(quarantine) else []
    found = [m.group(1) for r in reasons if (m := _UNKNOWN_CLASS.match(str(r)))]
    return {name: found.count(name) for name in sorted(set(found))}


_UNKNOWN_CLASS = re.compile(r"unknown class folder '([^']*)'")


def evaluate_checkpoint(checkpoint: str, data: DataConfig, output: str, part: str = "test",
                        batch_size: int = 256) -> dict:
    """Evaluate ``checkpoint`` on ``part`` of ``data`` (split ``all`` = every image)."""
    meta = read_meta(checkpoint)
    data = replace(data, classes=",".join(meta.classes))
    prepared = prepare(data, meta.input_size, meta.preprocess)
    labels, probs = predict(prepared.datasets[part], checkpoint, batch_size)
    metrics = compute_metrics(labels, probs, meta.classes)
    metrics.update({"checkpoint": checkpoint, "data": data.data, "split": data.split,
                    "part": part, "counts": prepared.counts, "model": meta.model,
                    "excluded_classes": excluded_classes(prepared.quarantine)})
    if len(prepared.quarantine):
        from wbc_ray.data.dataset import Quarantine

        Quarantine(prepared.quarantine).write(output)
    title = f"{meta.model} on {data.data} ({data.split} split, {part})"
    write_report(metrics, output, title)
    return metrics
