"""Per-trial resource arithmetic: what one trial holds, how many fit, what Ray Data keeps.

Pure functions of a :class:`~wbc_ray.config.TuneConfig` and a ``ray.cluster_resources()``
dict, so they are tested without Ray.
"""

from __future__ import annotations

import logging
import math
import os

from wbc_ray.config import TuneConfig

log = logging.getLogger(__name__)

DRIVER_CPUS = 1  # each trial's driver actor, which runs TorchTrainer.fit
DATA_CPU_SHARE = 0.25  # of the cluster's CPUs, kept free for Ray Data when deriving concurrency
DATA_CPUS_LOCAL = 2  # logical CPUs a local Ray keeps for Ray Data beyond one trial


def whole_gpus(tc: TuneConfig) -> int:
    """``tune.gpus_per_trial`` as a number of GPU workers (DDP has no fractional worker)."""
    if tc.gpus_per_trial < 0 or tc.gpus_per_trial != int(tc.gpus_per_trial):
        raise ValueError(f"tune.gpus_per_trial must be a whole number of GPU workers, "
                         f"got {tc.gpus_per_trial}")
    return int(tc.gpus_per_trial)


def trial_cpus(tc: TuneConfig) -> int:
    """CPUs one trial holds: its driver plus its Train workers."""
    return DRIVER_CPUS + (whole_gpus(tc) or tc.workers_per_trial) * tc.cpus_per_worker


def trial_resources() -> dict[str, float]:
    """What Tune reserves for a trial's own actor (the Train workers reserve theirs)."""
    return {"CPU": DRIVER_CPUS}


def data_cpus(cluster_cpus: float) -> float:
    """CPUs kept free for Ray Data when deriving concurrency: a share, at least one."""
    return max(1.0, DATA_CPU_SHARE * cluster_cpus)


def max_concurrent(tc: TuneConfig, n_trials: int, resources: dict[str, float]) -> int:
    """``tune.max_concurrent``, or what the cluster's CPUs (less a Data share) and GPUs fit."""
    if tc.max_concurrent is not None:
        return tc.max_concurrent
    cpus = resources.get("CPU", 0.0)
    fits = [n_trials, math.floor((cpus - data_cpus(cpus)) / trial_cpus(tc))]
    gpus = whole_gpus(tc)
    if gpus:
        fits.append(math.floor(resources.get("GPU", 0.0) / gpus))
    return max(1, min(fits))


def local_cpus(tc: TuneConfig, cpu_count: int | None = None) -> int:
    """Logical CPUs for a local Ray started for a sweep: at least one trial plus two for Data.

    On a 2-core machine a trial's driver and worker would otherwise take every logical
    CPU, and the worker group waits forever for Ray Data (Ray 2.60). The driver
    mostly waits, so logical CPUs above the core count are safe. Pass the result to
    ``wbc_ray.ray_session.init_ray`` when no ``RAY_ADDRESS`` is set.
    """
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(cores, trial_cpus(tc) + DATA_CPUS_LOCAL)


def check_capacity(tc: TuneConfig, resources: dict[str, float]) -> bool:
    """Warn (and return False) when the cluster cannot run one trial with Ray Data beside it."""
    cpus = resources.get("CPU", 0.0)
    if cpus >= trial_cpus(tc) + 1:
        return True
    log.warning("the Ray cluster has %g CPUs but a trial holds %d (driver + workers) and "
                "Ray Data needs at least 1 more: trials may wait forever unless the "
                "cluster scales up", cpus, trial_cpus(tc))
    return False
