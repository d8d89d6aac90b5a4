"""Starting or joining Ray: in-process local Ray by default, a cluster via RAY_ADDRESS."""

from __future__ import annotations

import logging
import os
import time

import ray

from wbc_ray.storage import STORAGE_ENV_VARS

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None, quiet: bool = True) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray in this process.

    Object-storage environment variables are forwarded to every worker, so an
    ``AWS_ENDPOINT_URL`` set for the driver also reaches the tasks reading images.
    """
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in STORAGE_ENV_VARS if k in os.environ}
    kwargs = {"runtime_env": {"env_vars": env}} if env else {}
    if not os.environ.get("RAY_ADDRESS"):
        # "local": always a new in-process instance, never a stray `ray start` cluster
        kwargs["address"] = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    ray.init(include_dashboard=False, **kwargs)
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.execution_options.preserve_order = True  # reproducible splits and outputs


def wait_for_gpus(n: int, wait_s: float) -> None:
    """Fail fast, with a clear message, when the cluster cannot provide ``n`` GPUs."""
    deadline = time.monotonic() + wait_s
    while True:
        have = ray.cluster_resources().get("GPU", 0)
        if have >= n:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"--gpus {n} requested but the Ray cluster has {have:g} GPU(s) "
                f"(waited {wait_s:g} s for the autoscaler). Use --workers N for CPU training, "
                f"or a cluster with GPU workers (see docs/CLUSTER.md).")
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
