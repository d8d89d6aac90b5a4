"""The search space: entries loaded like the run config, and params -> RunConfig.

A space maps a parameter name (a key of :data:`PARAMS`) to one of

- ``{loguniform: [low, high]}`` / ``{uniform: [low, high]}``: a continuous range;
- ``{choice: [a, b, ...]}``: sampled uniformly (enumerated by the grid searcher);
- ``{grid: [a, b, ...]}``: enumerated by the grid searcher, sampled like ``choice`` otherwise;
- a plain value: fixed for every trial;
- ``null`` (in ``tune.space``): drop the parameter from the default space, keeping the
  value the RunConfig already has.

``tune.space`` entries replace the default entry of the same name. A mapping entry is a
:class:`Dist` loaded by :func:`wbc_ray.config.from_dict` (strict); every value a trial can
get must build a valid RunConfig. ``model.*`` parameters are tuned only for models that
declare them (``wbc_ray.models.get_spec(name).params``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from wbc_ray.config import ConfigError, RunConfig, from_dict, to_dict
from wbc_ray.models import get_spec

# Around the paper's setting (Adam, lr 1e-4, dropout 0.2, one dense layer of 64);
# the paper does not state its batch size.
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"loguniform": [1e-5, 1e-3]},
    "dropout": {"choice": [0.1, 0.2, 0.3]},
    "batch_size": {"choice": [16, 32, 64]},
    "optimizer": {"choice": ["adam", "adamw"]},
    "weight_decay": {"loguniform": [1e-6, 1e-3]},
    "hidden": {"choice": [64, 128]},
    "augment": {"choice": [True, False]},
}

RANGES = ("loguniform", "uniform")
SETS = ("choice", "grid")


@dataclass(frozen=True)
class Dist:
    """One ``tune.space`` entry written as a mapping: exactly one of these keys."""

    loguniform: tuple[float, float] | None = None  # [low, high], low > 0
    uniform: tuple[float, float] | None = None  # [low, high]
    choice: list[Any] | None = None  # values sampled uniformly
    grid: list[Any] | None = None  # values enumerated by the grid searcher

    def __post_init__(self):
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise ValueError(f"expected one of {list(RANGES + SETS)} as the only key, "
                             f"got {given}")
        if self.kind in SETS and not self.values:
            raise ValueError(f"{self.kind} needs a non-empty list")
        if self.kind in RANGES:
            low, high = self.values
            if not low < high:
                raise ValueError(f"{self.kind} needs low < high, got {list(self.values)}")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low!r}")

    @property
    def kind(self) -> str:
        return next(f.name for f in fields(self) if getattr(self, f.name) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)


def _widths(v: Any) -> Any:
    """``64`` -> ``(64,)``; ``[128, 64]`` -> two dense layers."""
    return tuple(v) if isinstance(v, list | tuple) else (v,)


@dataclass(frozen=True)
class Param:
    section: str  # RunConfig section: "train" or "model"
    field: str  # field in that section
    convert: Callable[[Any], Any] = lambda v: v  # sampled value -> config value


PARAMS: dict[str, Param] = {
    "lr": Param("train", "lr"),
    "weight_decay": Param("train", "weight_decay"),
    "batch_size": Param("train", "batch_size"),
    "optimizer": Param("train", "optimizer"),
    "augment": Param("train", "augment"),
    "dropout": Param("model", "dropout"),
    "hidden": Param("model", "hidden", _widths),
}


def _unknown(keys) -> None:
    if unknown := sorted(set(keys) - set(PARAMS)):
        raise ValueError(f"tune.space: unknown parameter(s) {unknown}; known: {sorted(PARAMS)}")


def model_takes(model: str, key: str) -> bool:
    """Whether tuning ``key`` reaches the model: train params always, model params if declared."""
    p = PARAMS[key]
    return p.section != "model" or p.field in get_spec(model).params


def apply_params(cfg: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with the sampled ``params`` written into their sections, checked
    as the run config is (errors name the ``tune.space`` key and the config key)."""
    _unknown(params)
    values = to_dict(cfg)
    for key, value in params.items():
        p = PARAMS[key]
        values[p.section][p.field] = p.convert(value)
    try:
        return from_dict(RunConfig, values)
    except ConfigError as e:
        keys = [k for k in params if f"{PARAMS[k].section}.{PARAMS[k].field}" == e.key]
        where = f"tune.space.{keys[0]}" if keys else f"tune.space ({', '.join(sorted(params))})"
        raise type(e)(where, str(e)) from None


def resolve_space(overrides: Mapping[str, Any] | None = None,
                  model: str | None = None) -> dict[str, Any]:
    """The default space with ``overrides`` applied (``None`` drops a parameter).

    With ``model``, default entries for model parameters that model does not declare are
    left out (a baseline has no ``dropout``/``hidden``); overrides are kept as given, so
    :func:`validate_space` can name a parameter the model does not take.
    """
    space = {k: v for k, v in DEFAULT_SPACE.items() if model is None or model_takes(model, k)}
    for key, spec in (overrides or {}).items():
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = spec
    return space


def parse_entry(key: str, spec: Any) -> tuple[str, Any]:
    """``(kind, values)`` of one entry; kind is a distribution name or ``"fixed"``."""
    if isinstance(spec, list):
        raise ValueError(f"tune.space.{key}: a bare list is ambiguous; write "
                         f"{{choice: {spec}}} or {{grid: {spec}}}")
    if not isinstance(spec, dict):
        return "fixed", spec
    try:
        dist = from_dict(Dist, spec)
    except ConfigError as e:
        raise type(e)(f"tune.space.{key}.{e.key}", e.message) from None
    except ValueError as e:
        raise ValueError(f"tune.space.{key}: {e}") from None
    return dist.kind, list(dist.values)


def validate_space(space: Mapping[str, Any], base: RunConfig) -> None:
    """Fail, naming the key, on unknown parameters, parameters the model does not take,
    malformed entries, or values the run config rejects."""
    if not isinstance(space, Mapping):
        raise ValueError(f"tune.space must be a mapping, got {type(space).__name__}")
    _unknown(space)
    model = base.model.name
    for key, spec in space.items():
        if not model_takes(model, key):
            raise ValueError(f"tune.space.{key}: model {model!r} does not take "
                             f"{PARAMS[key].section}.{PARAMS[key].field}; its parameters are "
                             f"{list(get_spec(model).params)} (drop it, or set it to null)")
        kind, values = parse_entry(key, spec)
        candidates = ([*values, sum(values) / 2] if kind in RANGES  # a range samples floats
                      else values if kind in SETS else [values])
        for v in candidates:
            apply_params(base, {key: v})
