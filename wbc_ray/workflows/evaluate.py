"""`wbc-ray evaluate`: a checkpoint on any labelled folder, bucket or held-out split part."""

from __future__ import annotations

from dataclasses import replace

from wbc_ray.config import DataConfig
from wbc_ray.evaluation.run import evaluate_checkpoint
from wbc_ray.models.checkpoint import read_meta


def evaluate(checkpoint: str, data: str, split: str = "all", part: str = "test",
                 groups: str | None = None, output: str = "runs/eval") -> dict:
    """``wbc-ray evaluate``: with a split protocol, its seed and fractions come from the
    checkpoint's own config, so the test part is the one held out during training."""
    trained = read_meta(checkpoint).config.get("data", {})
    base = DataConfig(data=data, split=split, groups=groups)
    if split != "all":
        base = replace(base, seed=trained.get("seed", 0),
                       fractions=tuple(trained.get("fractions", base.fractions)),
                       groups=groups or trained.get("groups"),
                       limit_per_class=trained.get("limit_per_class"))
    return evaluate_checkpoint(checkpoint, base, output, part=part if split != "all" else "test")
