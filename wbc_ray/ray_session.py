"""Starting or joining Ray: in-process local Ray by default, a cluster via RAY_ADDRESS.

The driver owns the local Ray it starts: every Ray process it spawns carries
``WBC_RAY_OWNER=<pid>-<start time>`` in its environment; on exit and on SIGTERM/SIGHUP the
driver shuts Ray down and kills what is left of its own, and the next :func:`init_ray` after
a SIGKILL finds sessions whose driver is dead (a small file per session under
:func:`wbc_ray.console.runtime_dir`) and kills their processes.

Credentials never travel in ``runtime_env`` (Ray logs it, e.g. in
``logs/runtime_env_agent.log``): a local Ray's processes inherit the driver's environment,
and cluster nodes resolve credentials from their own environment, profile or instance role.
Only non-secret storage settings (endpoint, region, profile name) are forwarded.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import threading
import time

import ray

from wbc_ray import console
from wbc_ray.storage import STORAGE_ENV_VARS

log = logging.getLogger(__name__)

OWNER_ENV = "WBC_RAY_OWNER"
# Names that hold a secret (or identify one): never forwarded, never logged.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|CONNECTION_STRING|ACCESS_KEY|_KEY$|SAS")
_SESSIONS = "ray-sessions"
_owned: dict = {"owner": None, "record": None}


def forwarded_env(environ=None) -> dict[str, str]:
    """The storage variables safe to hand to Ray's ``runtime_env`` (no secrets)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in STORAGE_ENV_VARS
            if k in environ and not _SECRET_NAME.search(k)}


def init_ray(num_cpus: int | None = None, quiet: bool = True, *, verbose: bool | None = None,
             temp_dir: str | None = None) -> str | None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray owned by this process.

    ``verbose`` (default: ``not quiet``, or ``WBC_RAY_VERBOSE=1``) keeps Ray's own console
    output; otherwise :mod:`wbc_ray.console` keeps only our lines. ``temp_dir`` is Ray's
    root temp folder for a local instance (default: Ray's, ``RAY_TMPDIR`` or /tmp/ray).
    Call once, at the entry point; a second call while Ray runs does nothing.

    Returns the folder holding Ray's logs for a local instance started here (the place to
    name in a start line), else None.
    """
    if ray.is_initialized():
        return None
    verbose = console.setup(not quiet if verbose is None else verbose)
    env = forwarded_env()
    kwargs: dict = {"runtime_env": {"env_vars": env}} if env else {}
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        cleanup_stale_sessions()
        # "local": always a new instance, never a stray `ray start` cluster
        kwargs["address"] = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if temp_dir is not None:
            kwargs["_temp_dir"] = os.path.abspath(temp_dir)
        _own_local_ray(lambda: ray.init(include_dashboard=False, **kwargs))
    else:
        ray.init(include_dashboard=False, **kwargs)
    session = _session_dir()
    console.attach_session(session)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose  # our own tqdm bars show progress otherwise
    ctx.execution_options.preserve_order = True  # reproducible splits and outputs
    return os.path.join(session, "logs") if local and session else None


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


# ---------------------------------------------------------------- owning the local Ray

def _owner_tag(pid: int) -> str | None:
    """``<pid>-<start time>`` of a live process (start time: a reused pid is another owner)."""
    import psutil

    try:
        return f"{pid}-{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _sessions_dir() -> str:
    folder = os.path.join(console.runtime_dir(), _SESSIONS)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


def _own_local_ray(start) -> None:
    """Run ``start()`` (ray.init) with the owner tag in the environment Ray's processes
    inherit, record the session, and clean up on exit and on SIGTERM/SIGHUP."""
    owner = _owner_tag(os.getpid())
    if _owned["owner"] is None:
        atexit.register(_release)  # after ray's own atexit hook: runs first (LIFO)
    _owned["owner"] = owner
    saved = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = owner
    try:
        start()
    finally:  # only Ray's processes carry the tag, not later children of the driver
        if saved is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = saved
    _install_signal_handlers()
    record = os.path.join(_sessions_dir(), f"{owner}.json")
    with open(record, "w") as f:
        json.dump({"owner": owner, "pid": os.getpid(), "session_dir": _session_dir()}, f)
    _owned["record"] = record


def _session_dir() -> str | None:
    try:
        return ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:
        return None


def owned_processes(owner: str) -> list:
    """This user's live processes whose environment carries ``WBC_RAY_OWNER=owner``."""
    import psutil

    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != os.getuid():
                continue
            if p.environ().get(OWNER_ENV) == owner:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_processes(procs: list, grace_s: float = 3.0) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the pids that were alive."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in procs]


def cleanup_stale_sessions() -> list[int]:
    """Kill the Ray processes of local sessions whose driver died without cleaning up
    (SIGKILL, OOM kill, power loss of a terminal); returns the pids killed."""
    killed: list[int] = []
    folder = _sessions_dir()
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        owner = name[: -len(".json")]
        pid = int(owner.split("-", 1)[0]) if owner.split("-", 1)[0].isdigit() else -1
        if pid > 0 and _owner_tag(pid) == owner:
            continue  # its driver is alive
        procs = owned_processes(owner)
        if procs:
            log.warning("killing %d Ray processes left by a dead driver (pid %d)",
                        len(procs), pid)
            killed += kill_processes(procs)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    return killed


def _release() -> None:
    """At exit: shut Ray down, kill what is left of the processes we own, drop the record."""
    owner = _owned["owner"]
    if owner is None:
        return
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # exiting anyway: the processes are killed below
        log.debug("ray.shutdown failed at exit", exc_info=True)
    console.close()
    leftovers = owned_processes(owner)
    if leftovers:
        kill_processes(leftovers, grace_s=2.0)
    if _owned["record"]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_owned["record"])
    _owned.update(owner=None, record=None)


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP exit through ``SystemExit``: ``finally`` blocks and atexit hooks
    run, so Ray is shut down and its processes are gone.

    Installed after ``ray.init``: the driver's C++ core installs abseil's failure-signal
    handler for SIGTERM, which prints ``*** SIGTERM received ...`` and often ends the process
    with SIGABRT before Python's handler (Ray's ``sys.exit(15)``) runs, skipping atexit.
    A handler someone else installed (not the default, not Ray's) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, _exit_on_signal) or getattr(
                current, "__module__", "").startswith("ray."):
            signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once
    raise SystemExit(128 + signum)
