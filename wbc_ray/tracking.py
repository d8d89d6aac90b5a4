"""Experiment tracking with MLflow: what ``train``, ``tune`` and ``evaluate`` log, and where.

Where: ``tracking.uri`` (``--tracking-uri``), else ``MLFLOW_TRACKING_URI``, else a local
store beside the run directory: ``<parent of the run>/mlruns`` (``runs/mlruns`` for
``wbc-ray train --output runs``), or ``./mlruns`` when the run lives in object storage.
MLflow 3.x refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true``, which is set for
file stores only; its recommended ``sqlite:///`` store needs SQLAlchemy and Alembic, which
mlflow-skinny does not install (``--tracking-uri sqlite:///...`` works once they are).

What (one MLflow run per run directory; a rerun that resumes a run continues its MLflow run):

- params: the resolved config flattened to dotted keys (``train.lr``), redacted;
- metrics per epoch, step = epoch (:data:`EPOCH_METRICS`): live from Ray Train's controller
  (:class:`EpochLogger`), completed from the run's history by the driver at the end;
- artifacts: the run's files, mirroring the run directory (``curves.png``, ``history.csv``,
  ``config.yaml``, ``eval-test/``, the checkpoint ``best/``); text files redacted;
- tune: one run per sweep (config, report, best checkpoint) holding one child run per trial
  (sampled params, per-epoch metrics), written by :class:`TrialLogger` (a Tune logger).

Why Train's controller and not ``ray.air.integrations.mlflow.setup_mlflow`` in the workers:
the controller gets each report once, with every rank's metrics (rank 0's row is already
all-reduced), and Ray pins it to the driver's node, so the default local store is reachable;
a worker may run on another node, would log the config unredacted, and every rank would need
``rank_zero_only`` care. Live logging is best effort: the driver fills in what it missed.

Secrets: parameters, tags and text artifacts go through :func:`redact` (credentials in
URIs, secret query parameters, values of secret environment variables, secret-named keys).

Unreachable servers: MLflow's HTTP timeout and retries are bounded (:data:`HTTP_DEFAULTS`,
the user's environment wins) and :func:`preflight` asks a server once before Ray starts; a
store that cannot be used is a :class:`TrackingError`, one line from the CLI. Failures after
the run has started are warnings: a long training never dies because its tracking did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ray.train
from ray.tune.logger import LoggerCallback

from wbc_ray import __version__, storage
from wbc_ray.config import TrackingConfig
from wbc_ray.console import is_verbose

log = logging.getLogger(__name__)

# Per-epoch metrics of a training row (wbc_ray.training.ray_train), logged with step = epoch.
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
                 "best_val_loss")
# MLflow's defaults wait 120 s per try and retry 7 times with backoff (minutes): bounded here.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
LOCAL_STORE = "mlruns"
REDACTED = "***"
RUN_DIR_TAG = "wbc_ray.run_dir"
_LOCAL_SCHEMES = ("", "file", "sqlite")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_PARAM = 6000  # MLflow's longest parameter value
_BATCH = 100  # MLflow's most params or tags per log_batch
_TEXT_MAX_BYTES = 16 << 20  # larger artifact files are binary as far as redaction goes

# Names that hold a secret (ray_session's rule for environment variables, plus common ones).
_SECRET_NAME = re.compile(r"secret|token|passw(or)?d|credential|connection_string|access_key"
                          r"|api_?key|private_key|(^|[._-])sas($|[._-])|(^|[._-])key$", re.I)
# scheme://user:password@host -> scheme://***@host. Greedy to the last '@' of the word: an
# AWS secret key pasted raw may hold '/' and '@' (so may "host:port/path@x": redacted too).
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)"
                           r"(?:[^/\s'\"@:]+:[^\s'\"]*|[^/\s'\"]*)@")
# ?X-Amz-Signature=...&sig=...: presigned URLs and SAS tokens
_SECRET_QUERY = re.compile(r"(?P<key>[?&][^=&#\s]*(token|signature|sig|secret|password|"
                           r"credential|key)[^=&#\s]*=)[^&#\s'\"]*", re.I)
_BAD_METRIC_CHARS = re.compile(r"[^\w\-./ ]")  # what MLflow refuses in a metric name
_MIN_SECRET_LEN = 8  # shorter environment values ("true", "1") are not hunted for


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable, refused, missing driver)."""


# ---------------------------------------------------------------- redaction

def redact(value: str) -> str:
    """``value`` without credentials in URIs, secret query parameters, or the value of any
    secret environment variable (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*PASSWORD*``)."""
    value = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
    value = _SECRET_QUERY.sub(lambda m: f"{m['key']}{REDACTED}", value)
    for secret in _secret_values():
        value = value.replace(secret, REDACTED)
    return value


def _secret_values() -> list[str]:
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k)
             and len(v) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)  # a secret that contains another goes first


def redact_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened (dotted keys), stringified and redacted; secret-named keys lose their value."""
    return {k: REDACTED if _SECRET_NAME.search(k) else redact(v)[:_MAX_PARAM]
            for k, v in flatten(params).items()}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (JSON for non-strings)."""
    out: dict[str, str] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def numeric(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested ``values`` under dotted keys (lists and bools left out)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(numeric(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


# ---------------------------------------------------------------- where

def store_uri(tc: TrackingConfig, run_dir: str) -> str | None:
    """The tracking URI for a run in ``run_dir`` (None: tracking is off)."""
    if not tc.enabled:
        return None
    given = _given_uri(tc)
    if given:
        return given
    if storage.is_remote(run_dir):
        folder = os.path.abspath(LOCAL_STORE)
        log.warning("tracking to the local store %s (the run is in object storage; use "
                    "--tracking-uri for a shared MLflow server)", folder)
    else:
        folder = os.path.join(os.path.dirname(storage.filesystem(run_dir.rstrip("/"))[1]),
                              LOCAL_STORE)
    return Path(folder).as_uri()


def _given_uri(tc: TrackingConfig) -> str | None:
    """``tc.uri`` or ``MLFLOW_TRACKING_URI``; a plain path becomes a ``file:`` URI."""
    uri = (tc.uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri or not tc.enabled:
        return None
    return uri if _SCHEME.match(uri) else Path(uri).resolve().as_uri()


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in _LOCAL_SCHEMES


def _prepare(uri: str) -> None:
    """Environment MLflow reads at each call: bounded HTTP, file stores allowed, quiet."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if not is_verbose():
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is imported
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
        pool = logging.getLogger("urllib3.connectionpool")  # "Retrying ... /api/2.0/mlflow/"
        if not any(isinstance(f, _MlflowRetries) for f in pool.filters):
            pool.addFilter(_MlflowRetries())


class _MlflowRetries(logging.Filter):
    """Drops urllib3's retry warnings about MLflow's API (the error says it in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/mlflow/" not in record.getMessage()


def client(uri: str):
    """An ``MlflowClient`` for ``uri`` with :func:`_prepare`'s environment."""
    _prepare(uri)
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        raise ImportError(f"experiment tracking needs MLflow ({e}): pip install mlflow-skinny, "
                          "or pass --no-track") from None
    _check_driver(uri)
    return MlflowClient(tracking_uri=uri)


def _check_driver(uri: str) -> None:
    """Database stores need SQLAlchemy and Alembic, which mlflow-skinny leaves out."""
    if not urlparse(uri).scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        return
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise ImportError(f"the MLflow store {redact(uri)} needs SQLAlchemy and Alembic: pip "
                          "install sqlalchemy alembic (or use a file: store or a server)"
                          ) from None


def _call(uri: str, fn: Callable[[Any], Any]) -> Any:
    """``fn(client)``; any failure becomes one :class:`TrackingError` line naming the store."""
    try:
        return fn(client(uri))
    except ImportError:
        raise
    except Exception as e:  # MlflowException, requests' errors, OSError: all one story here
        raise TrackingError(f"MLflow tracking store {redact(uri)}: {_reason(e)}; check the "
                            "server, --tracking-uri or MLFLOW_TRACKING_URI, or pass "
                            "--no-track") from e


def _reason(e: BaseException) -> str:
    text = redact(str(e))
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out|timed out)",
                    r"(Name or service not known|nodename nor servname)"):
        m = re.search(pattern, text)
        if m:
            timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
            tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")) + 1
            return (f"{m.group(1).strip()} ({tries} {'try' if tries == 1 else 'tries'}, "
                    f"{timeout} s timeout)")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:300]


def preflight(tc: TrackingConfig) -> None:
    """Before Ray starts: a tracking server must answer (bounded timeout), or this raises
    :class:`TrackingError`. Local stores (the default) are created when first used."""
    uri = _given_uri(tc)
    if uri is None:
        return
    if _is_local(uri):
        _check_driver(uri)  # a missing SQLAlchemy is reported now, not after the training
        return
    _prepare(uri)
    retries = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ[retries]
    if saved == HTTP_DEFAULTS[retries]:  # ours, not the user's: one try is enough to ask
        os.environ[retries] = "0"
    try:
        _call(uri, lambda c: c.search_experiments(max_results=1))
    finally:
        os.environ[retries] = saved


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    """One MLflow run, by id: plain client calls, no active-run state (safe in any thread).

    A ``Run()`` without an id is tracking switched off: every method does nothing. After
    the run has started, a failing call is a warning (the run's files are on disk anyway).
    """

    uri: str | None = None
    run_id: str | None = None
    warned: set = field(default_factory=set)

    def __bool__(self) -> bool:
        return self.run_id is not None

    def _safe(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if not self:
            return None
        try:
            return fn(client(self.uri))
        except Exception as e:
            if what not in self.warned:
                self.warned.add(what)
                log.warning("tracking: could not log %s to %s: %s", what, redact(self.uri),
                            _reason(e))
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Redacted, dotted params; on a continued run only new keys (MLflow cannot change a
        param), the changed ones listed in the ``wbc_ray.changed_on_resume`` tag."""
        def go(c):
            from mlflow.entities import Param

            flat, old = redact_params(params), c.get_run(self.run_id).data.params
            changed = sorted(k for k in flat if k in old and old[k] != flat[k])
            new = [Param(k, v) for k, v in flat.items() if k not in old]
            for i in range(0, len(new), _BATCH):
                c.log_batch(self.run_id, params=new[i:i + _BATCH], synchronous=True)
            if changed:
                c.set_tag(self.run_id, "wbc_ray.changed_on_resume", redact(", ".join(
                    f"{k}: {old[k]} -> {flat[k]}" for k in changed))[:_MAX_PARAM])

        self._safe("params", go)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._safe("tags", lambda c: [c.set_tag(self.run_id, k, v)
                                      for k, v in _clean_tags(tags).items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """The numeric leaves of ``metrics`` (dotted keys) at ``step``."""
        self._safe("metrics", lambda c: _log_metrics(c, self.run_id, numeric(metrics), step))

    def log_history(self, history: Iterable[Mapping[str, Any]]) -> None:
        """The epochs of ``history`` that live logging missed (resumed, or a failed call)."""

        def go(c):
            seen = {m.step for m in c.get_metric_history(self.run_id, "val_loss")}
            for row in history:
                if int(row["epoch"]) not in seen:
                    _log_metrics(c, self.run_id, epoch_metrics(row), int(row["epoch"]))

        self._safe("epoch metrics", go)

    def log_artifact(self, uri: str, artifact_path: str | None = None) -> None:
        """A file or folder (local or remote) under ``artifact_path``; text is redacted."""
        self._safe(f"artifact {uri}", lambda c: _log_artifact(c, self.run_id, uri,
                                                              artifact_path))

    def epoch_logger(self) -> list:
        """Ray Train callbacks that log each epoch live (none when tracking is off)."""
        return [EpochLogger(self.uri, self.run_id)] if self else []

    def end(self, status: str) -> None:
        self._safe("the run's end", lambda c: c.set_terminated(self.run_id, status=status))


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(row[k]) for k in EPOCH_METRICS if isinstance(row.get(k), int | float)}


def _log_metrics(c, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(_BAD_METRIC_CHARS.sub("_", k), v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i:i + 1000], synchronous=True)


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: REDACTED if _SECRET_NAME.search(k) else redact(str(v))[:_MAX_PARAM]
            for k, v in tags.items() if v is not None}


def _log_artifact(c, run_id: str, uri: str, artifact_path: str | None) -> None:
    with storage.local_copy(uri) as local, tempfile.TemporaryDirectory() as tmp:
        if not os.path.isdir(local):
            c.log_artifact(run_id, _redacted_file(local, tmp), artifact_path)
            return
        root = artifact_path or os.path.basename(local.rstrip("/"))
        for folder, _, names in os.walk(local):
            rel = os.path.relpath(folder, local)
            dest = root if rel == "." else f"{root}/{Path(rel).as_posix()}"
            for name in sorted(names):
                c.log_artifact(run_id, _redacted_file(os.path.join(folder, name), tmp), dest)


def _redacted_file(path: str, tmp: str) -> str:
    """``path`` itself when binary (or big) or already clean, else a redacted copy."""
    if os.path.getsize(path) > _TEXT_MAX_BYTES:
        return path
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return path
    clean = redact(text)
    if clean == text:
        return path
    folder = tempfile.mkdtemp(dir=tmp)
    out = os.path.join(folder, os.path.basename(path))
    Path(out).write_text(clean, encoding="utf-8")
    return out


@contextlib.contextmanager
def start_run(tc: TrackingConfig, *, command: str, run_dir: str, name: str,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              resume: bool = True) -> Iterator[Run]:
    """The MLflow run of ``run_dir`` for the block; ended FINISHED, or FAILED on an error.

    Experiment ``tc.experiment`` or ``wbc-ray-<command>``. With ``resume``, the newest run
    tagged with the same run directory is continued (a resumed training is the same run).
    Starting fails with :class:`TrackingError` (before any work is done); later calls warn.
    """
    uri = store_uri(tc, run_dir)
    if uri is None:
        yield Run()
        return
    experiment = tc.experiment or f"wbc-ray-{command}"
    if not storage.is_remote(run_dir):
        run_dir = storage.filesystem(run_dir)[1]  # absolute: the tag finds the run again
    all_tags = {"wbc_ray.command": command, RUN_DIR_TAG: run_dir,
                "wbc_ray.version": __version__, **(tags or {})}
    run = Run(uri, _call(uri, lambda c: _open_run(c, experiment, name, all_tags, resume)))
    run.log_params(params or {})
    try:
        yield run
    except BaseException as e:
        run.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    run.end("FINISHED")


def _open_run(c, experiment: str, name: str, tags: Mapping[str, Any], resume: bool) -> str:
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp_id = c.create_experiment(experiment)
        except Exception:  # another driver created it just now
            exp = c.get_experiment_by_name(experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    clean = _clean_tags(tags)
    run_dir = clean[RUN_DIR_TAG]
    if resume and "'" not in run_dir:
        found = c.search_runs([exp_id], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            c.update_run(run_id, status="RUNNING")
            for k, v in clean.items():
                c.set_tag(run_id, k, v)
            return run_id
    return c.create_run(exp_id, tags=clean, run_name=name).info.run_id


# ---------------------------------------------------------------- Ray Train and Ray Tune

class EpochLogger(ray.train.UserCallback):
    """Ray Train callback: each epoch's metrics to the run, as it is reported.

    Runs in the Train controller actor, on the driver's node, once per report with every
    rank's metrics; rank 0's row (all-reduced over the ranks) is logged. Best effort: the
    first failure is a warning in the controller's log and ends live logging; the driver
    logs what is missing from the history at the end (:meth:`Run.log_history`).
    """

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id, self.failed = uri, run_id, False

    def after_report(self, run_context, metrics, checkpoint):
        if self.failed or not metrics:
            return
        row = metrics[0]
        try:
            _log_metrics(client(self.uri), self.run_id, epoch_metrics(row), int(row["epoch"]))
        except Exception as e:
            self.failed = True
            log.warning("tracking: live epoch logging stopped (%s); the driver logs the "
                        "history when training ends", _reason(e))


class TrialLogger(LoggerCallback):
    """Ray Tune logger callback (on the driver): a child run per trial under the sweep's run,
    its sampled params (redacted), :data:`EPOCH_METRICS` per epoch (step = epoch).

    Modelled on Ray's ``ray.air.integrations.mlflow.MLflowLoggerCallback``, which does not
    fit as is: its ``setup`` calls ``mlflow.set_tracking_uri``, which also exports
    ``MLFLOW_TRACKING_URI`` to the whole process (a later run in the same process would log
    to the sweep's store), it logs the config unredacted, and it steps by Tune's
    ``training_iteration``, which restarts when a trial is resumed. Tune pickles this with
    the sweep and a resumed sweep restores it: its parent is the sweep's run, which the
    resumed sweep continues, and each trial continues its own run (by run directory).
    """

    def __init__(self, parent: Run, experiment: str, sweep_dir: str):
        self.uri, self.experiment = parent.uri, experiment
        self.tags = _clean_tags({"mlflow.parentRunId": parent.run_id,
                                 "wbc_ray.command": "tune-trial", "wbc_ray.sweep_dir": sweep_dir})
        self._runs_dir = storage.join(sweep_dir, "runs")
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._warned = False

    def setup(self, *args, **kwargs):
        self._runs = {}

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # a sweep of hours never dies because its tracking did
            if not self._warned:
                self._warned = True
                log.warning("tracking: could not log a trial to %s: %s", redact(self.uri),
                            _reason(e))

    def log_trial_start(self, trial):
        def go():
            if trial.trial_id not in self._runs:
                # same directory name as wbc_ray.tuning.ray_compat.trial_name
                run_dir = storage.join(self._runs_dir, f"trial_{trial.trial_id}")
                tags = {**self.tags, "trial_name": str(trial), RUN_DIR_TAG: run_dir}
                self._runs[trial.trial_id] = _open_run(client(self.uri), self.experiment,
                                                       str(trial), tags, resume=True)
            Run(self.uri, self._runs[trial.trial_id]).log_params(trial.config)

        self._safe(go)

    def log_trial_result(self, iteration, trial, result):
        run_id = self._runs.get(trial.trial_id)
        if run_id and "epoch" in result:
            self._safe(lambda: _log_metrics(client(self.uri), run_id, epoch_metrics(result),
                                            int(result["epoch"])))

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._runs.get(trial.trial_id)
        if run_id:
            self._safe(lambda: client(self.uri).set_terminated(
                run_id, status="FAILED" if failed else "FINISHED"))


def trial_logger(parent: Run, tc: TrackingConfig, sweep_dir: str) -> list:
    """Tune callbacks that log each trial as a child of ``parent`` (none when off)."""
    return [TrialLogger(parent, tc.experiment or "wbc-ray-tune", sweep_dir)] if parent else []
