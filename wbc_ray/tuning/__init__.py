"""Hyperparameter sweeps: Ray Tune over Ray Train runs (ASHA on validation loss).

Modules: ``space`` (the search space), ``sweep`` (the driver, :func:`run_sweep`),
``trial`` (one trial), ``search`` (Tune domains, searchers, ASHA), ``resources``
(per-trial resource arithmetic), ``split`` (which split to tune on), ``report`` (the
trials table, best config and checkpoint, plot) and ``ray_compat`` (Ray-version-pinned
workarounds).
"""

from wbc_ray.tuning.report import SweepResult
from wbc_ray.tuning.space import DEFAULT_SPACE, PARAMS, apply_params, resolve_space, validate_space
from wbc_ray.tuning.sweep import SweepInterrupted, run_sweep

__all__ = ["DEFAULT_SPACE", "PARAMS", "SweepInterrupted", "SweepResult", "apply_params",
           "resolve_space", "run_sweep", "validate_space"]
