"""Typed, frozen configuration: one dataclass per concern, loadable from YAML.

Precedence (lowest to highest): dataclass defaults < YAML file < CLI flags.
Unknown keys and wrong types fail with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import dacite
import yaml

Split = Literal["paper", "official", "grouped", "all"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class DataConfig:
    data: str | None = None  # folder or manifest URI (local path, s3://...); None = synthetic demo
    classes: str = "paper"  # "paper" (4 types), "lisc" (5, with BASOPHIL) or "A,B,C"
    split: Split = "paper"  # paper: stratified random; official: folder split; grouped: by group
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)  # train / val / test
    seed: int = 0  # split seed; the same seed gives the same split
    groups: str | None = None  # CSV with `path` (relative to data) and a group column
    group_column: str = "best_original"  # the group column in `groups`
    limit_per_class: int | None = None  # keep at most N images per class (quick runs, tests)
    cache: str | None = None  # URI for decoded uint8 Parquet shards; reused across runs
    max_pixels: int = 40_000_000  # larger images are quarantined as decompression bombs


@dataclass(frozen=True)
class ModelConfig:
    name: str = "paper_cnn"  # a name from wbc_ray.models.list_models()
    hidden: tuple[int, ...] = (64,)  # paper_cnn dense widths (the paper lists one of 64)
    dropout: float = 0.2  # paper_cnn dropout after every conv block
    pretrained: bool = True  # baselines: start from ImageNet weights
    weights: str | None = None  # baselines: local path or URI of the ImageNet weights file
    finetune: bool = False  # baselines: train the whole network instead of the head only
    input_size: int | None = None  # None: the model's declared size (100 paper_cnn, 224/299)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150  # the paper trains 150 epochs
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4  # the paper's Adam learning rate
    weight_decay: float = 0.0
    patience: int | None = None  # early stopping: epochs without a better val loss
    precision: Precision = "fp32"  # bf16 autocast on CPU/GPU, fp16 on GPU only
    channels_last: bool = True
    augment: bool = True  # random flips and 90-degree rotations, drawn per epoch
    gpus: int = 0  # >0: that many GPU workers (NCCL)
    workers: int = 1  # CPU workers (gloo) when gpus == 0
    cpus_per_worker: int = 1
    placement: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD: one worker per node if possible
    output: str = "runs"  # run directory root: local path or s3://
    name: str | None = None  # run name; rerunning a name resumes it
    max_failures: int = 2  # worker-group restarts before the run fails
    seed: int = 0
    gpu_wait_s: float = 30.0  # fail if the requested GPUs do not appear within this time


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 8
    max_epochs: int = 30
    grace_period: int = 2  # ASHA: minimum epochs before a trial may be stopped
    gpus_per_trial: float = 0
    workers_per_trial: int = 1
    cpus_per_worker: int = 1
    max_concurrent: int | None = None  # None: as many as the cluster's resources allow
    searcher: Literal["random", "grid", "optuna"] = "random"
    space: dict[str, Any] = field(default_factory=dict)  # overrides of the default space
    output: str = "runs/tune"
    name: str = "sweep"
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    checkpoint: str = ""
    input: str = ""
    output: str = ""
    review_threshold: float = 0.6  # cells below this confidence get needs_review
    min_cells: int = 100  # fewer cells in a sample: insufficient_count
    reference_ranges: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "NEUTROPHIL": (50.0, 70.0),
            "LYMPHOCYTE": (20.0, 40.0),
            "MONOCYTE": (3.0, 9.0),
            "EOSINOPHIL": (2.0, 4.0),
        }
    )  # normal differential ranges in percent (the paper's)
    batch_size: int = 256
    rescore: bool = False  # score everything again, even cells already scored
    run_date: str | None = None  # partition value for this night (default: today, UTC)
    actors: int | None = None  # model actors (default: one per GPU, else one per CPU)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


_DACITE = dacite.Config(strict=True, cast=[tuple])


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-4`` is a number (PyYAML's 1.1 rules make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def from_dict(cls: type, values: dict[str, Any]):
    """Build a config dataclass, failing loudly on unknown keys and wrong types."""
    try:
        return dacite.from_dict(cls, values, config=_DACITE)
    except dacite.UnexpectedDataError as e:
        raise ValueError(f"unknown config key(s) {sorted(e.keys)} for {cls.__name__}") from e
    except dacite.WrongTypeError as e:
        raise TypeError(
            f"config key {e.field_path!r}: expected {e.field_type}, got {e.value!r}"
        ) from e
    except dacite.DaciteError as e:
        raise ValueError(f"invalid {cls.__name__}: {e}") from e


def to_dict(cfg) -> dict[str, Any]:
    """Plain YAML-safe dict (tuples become lists)."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into ``base``; None values in ``override`` mean "not given"."""
    out = dict(base)
    for k, v in override.items():
        if v is None:
            continue
        if isinstance(v, dict) and k not in ("space", "reference_ranges"):
            out[k] = merge(out.get(k) if isinstance(out.get(k), dict) else {}, v)
        else:
            out[k] = v
    return out


def load_run_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < YAML at ``path`` < ``overrides`` (``{"train": {"epochs": 3}}``; None = unset)."""
    values: dict[str, Any] = {}
    if path:
        from wbc_ray.storage import read_text

        loaded = load_yaml(read_text(path)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        values = loaded
    values = merge(values, overrides or {})
    try:
        return from_dict(RunConfig, values)
    except (ValueError, TypeError) as e:
        where = f" in {path}" if path else ""
        raise type(e)(f"{e}{where}") from e


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
