"""Workarounds for Ray Tune + Train V2 behaviour, pinned to :data:`RAY_VERSION`.

Each class below leans on Ray internals that moved within recent releases. They were
written and tested against Ray 2.60.0; :func:`check_ray_version` refuses any other version
so a Ray upgrade fails at the start of a sweep, not as a hang or a leak mid-sweep. After an
upgrade, rerun ``tests/test_tune.py``, recheck each comment below, then bump the pin.
"""

from __future__ import annotations

import ray
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from wbc_ray import storage

RAY_VERSION = "2.60.0"  # the Ray these workarounds were written against (pyproject pins it)
TIME_ATTR = "epochs_done"  # ASHA's time axis; survives a resumed trial, see EpochReport
STOP_FILE = "tune_stop"  # in a trial's run directory: ASHA asked the trial to stop


def check_ray_version(version: str | None = None) -> None:
    """Fail loudly when the installed Ray is not the one these workarounds target."""
    version = ray.__version__ if version is None else version
    if version != RAY_VERSION:
        raise RuntimeError(
            f"wbc_ray.tuning works around Ray {RAY_VERSION} internals (see "
            f"wbc_ray/tuning/ray_compat.py) but Ray {version} is installed; install "
            f"ray[data,train,tune]=={RAY_VERSION} or recheck the workarounds and the pin")


def trial_name(trial) -> str:
    """Deterministic per trial: a resumed trial finds its Train run under the same name."""
    return f"trial_{trial.trial_id}"


def stop_file(runs_dir: str, name: str) -> str:
    return storage.join(runs_dir, name, STOP_FILE)


class EpochReport(TuneReportCallback):
    """Forwards each epoch's report to Tune, adding ``epochs_done`` for ASHA's time axis,
    and ends the Train run cleanly once ASHA has asked this trial to stop.

    Ray 2.60 behaviours worked around:

    - ``TuneReportCallback.after_report`` forwards ``metrics[0]`` as is, and Tune's own
      ``training_iteration`` does not survive a resumed trial, so ASHA's time axis would be
      wrong after a resume. ``epochs_done`` (epoch + 1, from the Train run) does survive.
    - Train V2 has no public API to end a run from a callback. This runs in the Train V2
      controller actor, whose ``TrainController.abort`` is what Ray Train does on Ctrl-C: it
      removes the worker group and its placement group before the controller exits.
    """

    def __init__(self, stop_file: str):
        super().__init__()
        self._stop_file = stop_file

    def after_report(self, run_context, metrics, checkpoint):
        first = {**metrics[0], TIME_ATTR: metrics[0]["epoch"] + 1}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)
        if storage.exists(self._stop_file):
            ray.get_runtime_context().current_actor.abort.remote()


class GracefulASHA(ASHAScheduler):
    """ASHA whose "stop" lets the trial end its Train run itself.

    Ray 2.60 behaviour worked around: Tune stops a trial by killing its actor, which kills
    the Train controller it owns before the controller can remove its workers' placement
    group. Ray's fallback cleaner needs the dashboard's state API (off in local sessions,
    confused by two local Ray instances on one machine), so each stopped trial would leak
    its workers' CPUs until later trials could not be scheduled. Instead the trial is marked
    (a :data:`STOP_FILE` in its run directory) and kept running; :class:`EpochReport` aborts
    its Train run at the next report (one more epoch at most).
    """

    def __init__(self, runs_dir: str, **kwargs):
        super().__init__(**kwargs)
        self._runs_dir = runs_dir

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != self.STOP or result.get("done"):
            return decision
        path = stop_file(self._runs_dir, trial_name(trial))
        if not storage.exists(path):
            storage.write_text(path, f"stopped by ASHA after {result[TIME_ATTR]} epochs\n")
        return self.CONTINUE


def basic_searcher(seed: int, concurrency: int):
    """Random or grid search at most ``concurrency`` trials at a time.

    Ray 2.60 behaviour worked around: ``BasicVariantGenerator`` is a SearchAlgorithm, not a
    Searcher, and Tune ignores ``TuneConfig.max_concurrent_trials`` for it; its own
    ``max_concurrent`` is the limit that holds.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)
