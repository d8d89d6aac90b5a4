"""Hyperparameter sweeps: Ray Tune over Ray Train runs (ASHA on validation loss)."""

from wbc_ray.tuning.space import DEFAULT_SPACE, PARAMS, apply_params, resolve_space, validate_space
from wbc_ray.tuning.sweep import SweepInterrupted, SweepResult, run_sweep

__all__ = ["DEFAULT_SPACE", "PARAMS", "SweepInterrupted", "SweepResult", "apply_params",
           "resolve_space", "run_sweep", "validate_space"]
