"""Checks that need I/O but not Ray: run before Ray starts, so a wrong argument is reported in
seconds with the URI it names (the config types already checked values and ranges)."""

from __future__ import annotations

from wbc_ray import storage
from wbc_ray.config import RunConfig, ScoreConfig
from wbc_ray.data.prepare import NEAR_DUPLICATES
from wbc_ray.models.checkpoint import resolve_checkpoint


def check_train(cfg: RunConfig) -> None:
    if cfg.data.data is not None:
        storage.check_readable(cfg.data.data)
    if cfg.data.groups and cfg.data.groups != NEAR_DUPLICATES:
        storage.check_readable(cfg.data.groups)
    storage.check_writable(cfg.train.output)


def check_evaluate(checkpoint: str, data: str, output: str) -> str:
    """The resolved checkpoint directory (see :func:`resolve_checkpoint`)."""
    resolved = resolve_checkpoint(checkpoint)
    storage.check_readable(data)
    storage.check_writable(output)
    return resolved


def check_score(cfg: ScoreConfig) -> ScoreConfig:
    """``cfg`` with its checkpoint resolved to the checkpoint directory."""
    from dataclasses import replace

    resolved = resolve_checkpoint(cfg.checkpoint)
    storage.check_readable(cfg.input)
    storage.check_writable(cfg.output)
    return replace(cfg, checkpoint=resolved)
