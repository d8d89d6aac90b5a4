"""How trials are proposed and stopped: Tune domains, the searcher table, ASHA, the trial count."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ray import tune

from wbc_ray.config import TuneConfig
from wbc_ray.tuning.ray_compat import TIME_ATTR, GracefulASHA, basic_searcher, trial_name
from wbc_ray.tuning.resources import whole_gpus
from wbc_ray.tuning.space import RANGES, SETS, parse_entry

METRIC, MODE = "val_loss", "min"


def grid_size(space: Mapping[str, Any]) -> int:
    """Number of points the grid searcher enumerates (fixed values count once)."""
    sizes = []
    for key, spec in space.items():
        kind, values = parse_entry(key, spec)
        if kind in RANGES:
            raise ValueError(f"tune.space.{key}: the grid searcher cannot enumerate a {kind} "
                             f"range; give {{grid: [...]}} or {{choice: [...]}} values")
        sizes.append(len(values) if kind in SETS else 1)
    return math.prod(sizes)


def to_tune(space: Mapping[str, Any], searcher: str) -> dict[str, Any]:
    """The Tune ``param_space``: ranges and sets become Tune domains.

    With ``searcher="grid"`` every set is a ``grid_search`` axis (no ranges allowed);
    otherwise ``grid`` entries are sampled like ``choice``.
    """
    if searcher == "grid":
        grid_size(space)  # raises, naming the key, on a range
    sets = tune.grid_search if searcher == "grid" else tune.choice
    domains: dict[str, Callable[[Any], Any]] = {
        "loguniform": lambda v: tune.loguniform(*map(float, v)),
        "uniform": lambda v: tune.uniform(*map(float, v)),
        "choice": sets, "grid": sets, "fixed": lambda v: v}
    return {k: domains[kind](v) for k, (kind, v) in
            ((k, parse_entry(k, s)) for k, s in space.items())}


def _optuna(seed: int, concurrency: int):
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("tune.searcher 'optuna' needs the optuna package: "
                         "pip install 'wbc-ray[optuna]' (or use random or grid)") from None
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrency)


# tune.searcher -> fn(seed, max concurrent trials) -> a Tune search algorithm
SEARCHERS = {"random": basic_searcher, "grid": basic_searcher, "optuna": _optuna}


def check_tune_config(tc: TuneConfig) -> None:
    """What ``TuneConfig`` itself cannot check, before any data is decoded."""
    if tc.searcher not in SEARCHERS:
        raise ValueError(f"unknown tune.searcher {tc.searcher!r}; "
                         f"choose one of {sorted(SEARCHERS)}")
    whole_gpus(tc)
    SEARCHERS[tc.searcher](tc.seed, 1)  # e.g. optuna not installed


def count_trials(tc: TuneConfig, space: dict[str, Any]) -> int:
    """``tune.trials``; for the grid searcher the grid's size, which must fit in it."""
    if tc.searcher != "grid":
        return tc.trials
    n = grid_size(space)
    if n > tc.trials:
        raise ValueError(f"the grid over {sorted(space)} has {n} points but tune.trials is "
                         f"{tc.trials}; raise --trials to {n} or narrow tune.space")
    return n


def tune_config(tc: TuneConfig, n_trials: int, concurrency: int, runs_dir: str
                ) -> tune.TuneConfig:
    """Tune's settings: the searcher, ASHA on validation loss per epoch, trial names."""
    # stop_last_trials=False: a trial that reaches max_epochs ends on its own, cleanly.
    scheduler = GracefulASHA(runs_dir, time_attr=TIME_ATTR, max_t=tc.max_epochs,
                             grace_period=min(tc.grace_period, tc.max_epochs),
                             stop_last_trials=False)
    return tune.TuneConfig(
        metric=METRIC, mode=MODE, search_alg=SEARCHERS[tc.searcher](tc.seed, concurrency),
        scheduler=scheduler, num_samples=1 if tc.searcher == "grid" else n_trials,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name)
