"""The search space: a small YAML schema, its validation, and params -> RunConfig.

A space maps a parameter name (a key of :data:`PARAMS`) to one of

- ``{loguniform: [low, high]}`` / ``{uniform: [low, high]}``: a continuous range;
- ``{choice: [a, b, ...]}``: sampled uniformly (enumerated by the grid searcher);
- ``{grid: [a, b, ...]}``: enumerated by the grid searcher, sampled like ``choice`` otherwise;
- a plain value: fixed for every trial;
- ``null`` (in ``tune.space``): drop the parameter from the default space, keeping the
  value the RunConfig already has.

``tune.space`` entries replace the default entry of the same name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wbc_ray.config import RunConfig, from_dict, to_dict

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


def _number(v: Any) -> float:
    # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it looks like.
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError(f"expected a number, got {v!r}")
    try:
        return float(v)
    except ValueError:
        raise TypeError(f"expected a number, got {v!r}") from None


def _positive(v: Any) -> float:
    x = _number(v)
    if not x > 0:
        raise ValueError(f"must be > 0, got {v!r}")
    return x


def _non_negative(v: Any) -> float:
    x = _number(v)
    if not x >= 0:
        raise ValueError(f"must be >= 0, got {v!r}")
    return x


def _fraction(v: Any) -> float:
    x = _number(v)
    if not 0 <= x < 1:
        raise ValueError(f"must be in [0, 1), got {v!r}")
    return x


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TypeError(f"expected a positive whole number, got {v!r}")
    return v


def _widths(v: Any) -> tuple[int, ...]:
    """``64`` -> ``(64,)``; ``[128, 64]`` -> two dense layers."""
    widths = v if isinstance(v, list | tuple) else [v]
    if not widths:
        raise ValueError("needs at least one width")
    return tuple(_positive_int(w) for w in widths)


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a name, got {v!r}")
    return v


@dataclass(frozen=True)
class Param:
    section: str  # RunConfig section: "train" or "model"
    field: str  # field in that section
    convert: Callable[[Any], Any]  # sampled value -> config value; raises on a bad value


PARAMS: dict[str, Param] = {
    "lr": Param("train", "lr", _positive),
    "weight_decay": Param("train", "weight_decay", _non_negative),
    "batch_size": Param("train", "batch_size", _positive_int),
    "optimizer": Param("train", "optimizer", _name),
    "augment": Param("train", "augment", _flag),
    "dropout": Param("model", "dropout", _fraction),
    "hidden": Param("model", "hidden", _widths),
}


def apply_params(cfg: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with the sampled ``params`` written into their sections."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        if key not in PARAMS:
            raise ValueError(f"unknown tuning parameter {key!r}; known: {sorted(PARAMS)}")
        p = PARAMS[key]
        try:
            changes.setdefault(p.section, {})[p.field] = p.convert(value)
        except (TypeError, ValueError) as e:
            raise type(e)(f"tune.space.{key}: {e}") from None
    out = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kw)
                                      for s, kw in changes.items()})
    try:  # the config's own checks (e.g. optimizer names) still apply
        from_dict(RunConfig, to_dict(out))
    except (TypeError, ValueError) as e:
        bad = ", ".join(sorted(params))
        raise type(e)(f"tune.space ({bad}): {e}") from None
    return out


def resolve_space(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The default space with ``overrides`` applied (``None`` drops a parameter)."""
    space = dict(DEFAULT_SPACE)
    for key, spec in (overrides or {}).items():
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = spec
    return space


def _kind(key: str, spec: Any) -> tuple[str, Any]:
    """``(kind, values)`` of one entry; kind is a distribution name or ``"fixed"``."""
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            raise ValueError(f"tune.space.{key}: a bare list is ambiguous; write "
                             f"{{choice: {spec}}} or {{grid: {spec}}}")
        return "fixed", spec
    if len(spec) != 1:
        raise ValueError(f"tune.space.{key}: expected one of {list(RANGES + SETS)} as the "
                         f"only key, got {sorted(spec)}")
    (kind, values), = spec.items()
    if kind not in RANGES + SETS:
        raise ValueError(f"tune.space.{key}: unknown distribution {kind!r}; "
                         f"use one of {list(RANGES + SETS)}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"tune.space.{key}: {kind} needs a non-empty list, got {values!r}")
    return kind, values


def validate_space(space: Mapping[str, Any], base: RunConfig) -> None:
    """Fail, naming the key, on unknown parameters, malformed entries or bad values."""
    if not isinstance(space, Mapping):
        raise ValueError(f"tune.space must be a mapping, got {type(space).__name__}")
    unknown = sorted(set(space) - set(PARAMS))
    if unknown:
        raise ValueError(f"tune.space: unknown parameter(s) {unknown}; known: {sorted(PARAMS)}")
    for key, spec in space.items():
        kind, values = _kind(key, spec)
        if kind in RANGES:
            if len(values) != 2:
                raise ValueError(f"tune.space.{key}: {kind} needs [low, high], got {values!r}")
            try:
                low, high = (_number(v) for v in values)
            except TypeError as e:
                raise TypeError(f"tune.space.{key}: {e}") from None
            if not low < high:
                raise ValueError(f"tune.space.{key}: {kind} needs low < high, got {values!r}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"tune.space.{key}: loguniform needs low > 0, got {low!r}")
            candidates = [low, high, (low + high) / 2]  # a range samples floats
        else:
            candidates = values if kind in SETS else [values]
        for v in candidates:
            apply_params(base, {key: v})


def grid_size(space: Mapping[str, Any]) -> int:
    """Number of points the grid searcher enumerates (fixed values count once)."""
    sizes = []
    for key, spec in space.items():
        kind, values = _kind(key, spec)
        if kind in RANGES:
            raise ValueError(f"tune.space.{key}: the grid searcher cannot enumerate a {kind} "
                             f"range; give {{grid: [...]}} or {{choice: [...]}} values")
        sizes.append(len(values) if kind in SETS else 1)
    return math.prod(sizes)


def _numbers(values: list[Any]) -> list[float]:
    return [_number(v) for v in values]


def to_tune(space: Mapping[str, Any], searcher: str) -> dict[str, Any]:
    """The Tune ``param_space``: ranges and sets become Tune domains.

    With ``searcher="grid"`` every set is a ``grid_search`` axis (no ranges allowed);
    otherwise ``grid`` entries are sampled like ``choice``.
    """
    from ray import tune

    if searcher == "grid":
        grid_size(space)  # raises, naming the key, on a range
    domains: dict[str, Callable[[list[Any]], Any]] = {
        "loguniform": lambda v: tune.loguniform(*_numbers(v)),
        "uniform": lambda v: tune.uniform(*_numbers(v)),
        "choice": tune.grid_search if searcher == "grid" else tune.choice,
        "grid": tune.grid_search if searcher == "grid" else tune.choice,
        "fixed": lambda v: v,
    }
    return {key: domains[kind](values) for key, (kind, values) in
            ((k, _kind(k, s)) for k, s in space.items())}

