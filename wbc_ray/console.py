"""What a run prints: our own lines, progress bars and warnings that matter; nothing of Ray's.

By default the terminal gets one line per message we mean to show. Ray's internal INFO and
WARNING lines (the driver's ``ray`` and ``ray.data`` loggers, every worker's and actor's
output, the driver's C++ ``core_worker.cc`` lines) stay in Ray's session log files under
``<session>/logs``. ``--verbose`` or ``WBC_RAY_VERBOSE=1`` leaves Ray's console as it is.

Code running inside a Ray worker (a Ray Train rank, an actor) shows a line to the user with
:func:`say`; a plain ``print`` there is Ray's business and lands in the worker's log file.

How (Ray 2.60): worker output reaches the driver through Ray's log monitor; the driver's
handler for it is swapped for :func:`_forward`, which passes on only our marked lines and
``tqdm_ray`` progress bars. Ray Data's console handler is set to ERROR through Ray Data's
``RAY_DATA_LOGGING_CONFIG`` (its file handlers keep everything). The ``ray`` logger's console
handler is set to ERROR and a file handler writes ``<session>/logs/wbc-ray-driver.log``.
The driver's C++ core worker writes ERROR lines straight to file descriptor 2 (ray#57733:
"constructor arguments in the object store"); those are filtered at the descriptor, and
they are also in ``python-core-driver-*.log``.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import os
import re
import sys
import tempfile
import threading
import warnings

VERBOSE_ENV = "WBC_RAY_VERBOSE"
# Starts every line that a worker shows to the user (stripped by the driver).
MARKER = "[wbc-ray] "
DRIVER_LOG = "wbc-ray-driver.log"
# glog-style lines of Ray's C++ core (INFO, WARNING, ERROR; FATAL still reaches the user).
_NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWE] \d+ \d+\] \S+:\d+: ")

_state: dict = {"verbose": None, "buffer": None, "native": None}
log = logging.getLogger(__name__)


def is_verbose(flag: bool = False) -> bool:
    """``flag``, or ``WBC_RAY_VERBOSE`` set to anything but ``""``/``"0"``."""
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def setup(verbose: bool = False) -> bool:
    """Set up the driver's console before Ray starts; returns whether it is verbose.

    Idempotent. Verbose: nothing of Ray's is hidden. Quiet: Ray's driver-side loggers only
    print ERROR to the terminal (the rest is buffered until :func:`attach_session` writes it
    to the session's log folder), Ray's Python deprecation warnings are hidden.
    """
    verbose = is_verbose(verbose)
    if _state["verbose"] is not None:
        return _state["verbose"]
    _state["verbose"] = verbose
    if verbose:
        return True
    import ray  # noqa: F401  (creates the "ray" logger and its console handler)

    buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    buffer.setLevel(logging.DEBUG)
    _state["buffer"] = buffer
    # "ray.train"/"ray.tune" propagate to "ray"; "ray.data" has its own session log files
    logging.getLogger("ray").addHandler(buffer)
    _quiet_console_handlers(logging.getLogger("ray"))
    _quiet_ray_data()
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    return False


def attach_session(session_dir: str | None, filter_native: bool = True) -> str | None:
    """After ``ray.init``: Ray's driver log lines go to ``<session>/logs/wbc-ray-driver.log``,
    workers' output is filtered, and (``filter_native``) so is the C++ core's stderr.

    Returns the driver log path (None when verbose or without a local session folder)."""
    if _state["verbose"] is None:
        setup()
    if _state["verbose"]:
        return None
    _filter_worker_output()
    if filter_native and _state["native"] is None and _stderr_is_fd2():
        _state["native"] = _NativeStderrFilter()
    buffer, _state["buffer"] = _state["buffer"], None
    if buffer is None:
        return None
    ray_logger = logging.getLogger("ray")
    ray_logger.removeHandler(buffer)
    if not session_dir or not os.path.isdir(session_dir):
        buffer.buffer.clear()  # a driver of a remote cluster: Ray's own logs are on the head
        return None
    path = os.path.join(session_dir, "logs", DRIVER_LOG)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    target = logging.FileHandler(path, encoding="utf-8")
    target.setFormatter(logging.Formatter(
        "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"))
    buffer.setTarget(target)
    buffer.flush()
    ray_logger.addHandler(target)  # from now on straight to the file
    return path


def close() -> None:
    """Give file descriptor 2 back (after ``ray.shutdown``, so that its last lines are
    filtered too); :func:`wbc_ray.ray_session.init_ray` arranges this at exit."""
    native, _state["native"] = _state["native"], None
    if native is not None:
        native.close()


def say(line: str, *, err: bool = False) -> None:
    """Show ``line`` to the user, once, from the driver or from inside a Ray worker."""
    stream = sys.stderr if err else sys.stdout
    if _in_ray_worker():
        # stream.write, not print: Ray Train patches print() into a logger that also tees
        # to stdout (each line twice). The marker tells the driver this line is ours.
        stream.write(f"{MARKER}{line}\n")
    else:
        stream.write(f"{line}\n")
    stream.flush()


# ---------------------------------------------------------------- Ray's loggers

def _quiet_console_handlers(logger: logging.Logger) -> None:
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(max(h.level, logging.ERROR))


def _quiet_ray_data() -> None:
    """Ray Data re-applies its logging config at times; its documented switch is a YAML file
    named by ``RAY_DATA_LOGGING_CONFIG``: Ray's default config with the console at ERROR."""
    if os.environ.get("RAY_DATA_LOGGING_CONFIG"):
        return  # the user's own config wins
    import yaml
    from ray.data._internal import logging as data_logging

    config = copy.deepcopy(data_logging.DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = "ERROR"
    folder = runtime_dir()
    path = os.path.join(folder, "ray-data-logging.yaml")
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        yaml.safe_dump(config, f)
    os.replace(tmp, path)  # same content for every run: concurrent drivers may share it
    os.environ["RAY_DATA_LOGGING_CONFIG"] = path
    data_logging.configure_logging()


def runtime_dir() -> str:
    """A private per-user folder for small run-time files (``WBC_RAY_RUNTIME_DIR`` overrides)."""
    folder = os.environ.get("WBC_RAY_RUNTIME_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"wbc-ray-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


# ---------------------------------------------------------------- workers' output

def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except AttributeError:
        return False


def _filter_worker_output() -> bool:
    """Swap the driver's printer of worker output for :func:`_forward` (False: not found)."""
    import functools

    from ray._private import ray_logging

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    name = "ray_print_logs"  # the name ray.init registers it under (and shutdown removes)
    original = dict(dispatcher.handlers).get(name)
    if original is None or getattr(original, "func", None) is _forward:
        return original is not None
    dispatcher.remove_handler(name)
    dispatcher.add_handler(name, functools.partial(_forward, original=original))
    return True


def _forward(data: dict, original) -> None:
    """Print a batch of worker lines: ours without Ray's ``(Actor pid=…)`` prefix, progress
    bars through Ray's own printer, nothing else (it is in the worker's log file)."""
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    lines = data.get("lines") or []
    bars = [ln for ln in lines if RAY_TQDM_MAGIC in ln]
    if bars:
        original({**data, "lines": bars})
    ours = [ln[len(MARKER):] for ln in lines if ln.startswith(MARKER)]
    if ours:
        stream = sys.stderr if data.get("is_err") else sys.stdout
        stream.write("".join(f"{ln}\n" for ln in ours))
        stream.flush()


# ---------------------------------------------------------------- the C++ core's stderr

def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False  # pytest's capture, a notebook: nothing to filter at the descriptor


class _NativeStderrFilter:
    """Route file descriptor 2 through a pipe and drop Ray's C++ INFO/WARNING/ERROR lines.

    Python's ``sys.stderr`` is moved to a copy of the real descriptor first, so tracebacks,
    warnings and progress bars bypass the pipe (and a terminal stays a terminal for tqdm).
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.old_stderr = sys.stderr
        sys.stderr = open(self.real, "w", buffering=1, encoding=getattr(  # noqa: SIM115
            self.old_stderr, "encoding", None) or "utf-8", errors="backslashreplace",
            closefd=False)
        self.thread = threading.Thread(target=self._pump, name="wbc-ray-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(ln + b"\n" for ln in lines if not _NATIVE_LINE.match(ln))
            if pending and not pending.startswith(b"["):
                out, pending = out + pending, b""  # a partial line that is not Ray's: now
            if out:
                os.write(self.real, out)
        if pending and not _NATIVE_LINE.match(pending):
            os.write(self.real, pending)

    def close(self) -> None:
        """Put descriptor 2 back; what is still in the pipe is printed (or dropped) first."""
        try:
            sys.stderr.flush()
            os.dup2(self.real, 2)  # closes the pipe's write end: the pump sees EOF
            self.thread.join(timeout=2)
            sys.stderr = self.old_stderr
        except (OSError, ValueError):
            pass
