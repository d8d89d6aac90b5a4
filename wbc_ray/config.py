"""Typed, frozen configuration: one dataclass per concern, loadable from YAML.

Precedence (lowest to highest): dataclass defaults < YAML file < CLI flags.
Unknown keys and wrong types fail with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import dacite
import yaml

from wbc_ray.schema import MAX_PIXELS

Split = Literal["paper", "official", "grouped", "all"]
Precision = Literal["fp32", "bf16", "fp16"]
SPLITS: tuple[str, ...] = typing.get_args(Split)
KFOLD_SPLITS = ("paper", "grouped")  # splits that k-fold cross-validation can use
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


class ConfigError(ValueError):
    """A config value or key that cannot be used; names the dotted key (``train.epochs``)."""

    def __init__(self, key: str, message: str, where: str = ""):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}{where}")


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


def _check(section: str, cfg, **rules: tuple[bool, str]) -> None:
    """Raise :class:`ConfigError` for the first ``field=(ok, what is required)`` that fails."""
    for name, (ok, want) in rules.items():
        if not ok:
            raise ConfigError(f"{section}.{name}", f"must be {want}, got {getattr(cfg, name)!r}")


@dataclass(frozen=True)
class DataConfig:
    data: str | None = None  # folder or manifest URI (local path, s3://...); None = synthetic demo
    classes: str = "paper"  # "paper" (4 types), "lisc" (5, with BASOPHIL) or "A,B,C"
    split: Split = "paper"  # paper: stratified random; official: folder split; grouped: by group
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)  # train / val / test
    seed: int = 0  # split seed; the same seed gives the same split
    groups: str | None = None  # CSV with `path` (relative to data) and a group column, or
    # "near-duplicates": one group per set of near-identical images (the audit's fingerprints)
    group_column: str = "best_original"  # the group column in `groups`
    limit_per_class: int | None = None  # keep at most N images per class (quick runs, tests)
    cache: str | None = None  # URI for decoded uint8 Parquet shards; reused across runs
    folds: int | None = None  # k-fold cross-validation (split paper or grouped): k
    fold: int = 0  # the test fold, 0..folds-1
    max_pixels: int = MAX_PIXELS  # larger images are quarantined as decompression bombs

    def __post_init__(self):
        f = self.fractions
        _check("data", self,
               split=(self.split in SPLITS, f"one of {list(SPLITS)}"),
               fractions=(len(f) == 3 and all(x >= 0 for x in f) and abs(sum(f) - 1) < 1e-6,
                          "three non-negative fractions (train, val, test) summing to 1"),
               limit_per_class=(self.limit_per_class is None or self.limit_per_class >= 1,
                                ">= 1"),
               max_pixels=(self.max_pixels >= 1, ">= 1"),
               folds=(self.folds is None or (self.folds >= 2 and self.split in KFOLD_SPLITS),
                      f">= 2, with split one of {list(KFOLD_SPLITS)}"),
               fold=(0 <= self.fold < (self.folds or 1), "in [0, folds)"))


@dataclass(frozen=True)
class PreprocessConfig:
    """Deterministic preprocessing before the model; stored in every checkpoint, so evaluation
    and scoring apply exactly what training applied."""

    locate: bool = False  # crop a window around the located white cell (nucleus by stain colour)
    context: float | None = None  # window side relative to the located cell (None: default)
    normalise: Literal["none", "reinhard"] = "none"  # colour normalisation of every image

    def __post_init__(self):
        _check("preprocess", self,
               context=(self.context is None or self.context > 0, "> 0"),
               normalise=(self.normalise in ("none", "reinhard"), "none or reinhard"))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "paper_cnn"  # a name from wbc_ray.models.list_models()
    hidden: tuple[int, ...] = (64,)  # paper_cnn dense widths (the paper lists one of 64)
    dropout: float = 0.2  # dropout (paper_cnn: after every conv block; efficientnet: the head)
    pretrained: bool = True  # pretrained models: start from ImageNet weights
    weights: str | None = None  # pretrained models: path or URI of the ImageNet weights file
    finetune: bool = False  # pretrained models: train the whole network, not the head only
    bn: Literal["train", "frozen"] = "train"  # batch norm: update statistics, or keep ImageNet's
    input_size: int | None = None  # None: the model's declared size (100 paper_cnn, 224/299)

    def __post_init__(self):
        _check("model", self,
               hidden=(all(h >= 1 for h in self.hidden), "widths >= 1"),
               dropout=(0 <= self.dropout < 1, "in [0, 1)"),
               bn=(self.bn in ("train", "frozen"), "train or frozen"),
               input_size=(self.input_size is None or self.input_size >= 16, ">= 16 pixels"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150  # the paper trains 150 epochs
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4  # the paper's Adam learning rate
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"  # the paper: constant
    warmup_epochs: float = 0.0  # linear warm-up before the schedule (cosine)
    label_smoothing: float = 0.0
    patience: int | None = None  # early stopping: epochs without a better val loss
    precision: Precision = "fp32"  # bf16 autocast on CPU/GPU, fp16 on GPU only
    channels_last: bool = True
    augment: bool = True  # random flips and 90-degree rotations, drawn per epoch
    colour_augment: bool = False  # stain-space (HED) + hue/saturation/brightness/contrast + blur
    scale_augment: bool = False  # random resized crops (scale and centring)
    gpus: int = 0  # >0: that many GPU workers (NCCL)
    workers: int = 1  # CPU workers (gloo) when gpus == 0
    cpus_per_worker: int = 1
    placement: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD: one worker per node if possible
    output: str = "runs"  # run directory root: local path or s3://
    name: str | None = None  # run name; rerunning a name resumes it
    max_failures: int = 2  # worker-group restarts before the run fails
    seed: int = 0
    gpu_wait_s: float = 30.0  # fail if the requested GPUs do not appear within this time

    def __post_init__(self):
        _check("train", self,
               epochs=(self.epochs >= 1, ">= 1"),
               batch_size=(self.batch_size >= 1, ">= 1"),
               optimizer=(self.optimizer in ("adam", "adamw", "sgd"), "adam, adamw or sgd"),
               lr=(self.lr > 0, "> 0"),
               weight_decay=(self.weight_decay >= 0, ">= 0"),
               schedule=(self.schedule in ("constant", "cosine", "onecycle"),
                         "constant, cosine or onecycle"),
               warmup_epochs=(0 <= self.warmup_epochs < self.epochs, ">= 0 and < train.epochs"),
               label_smoothing=(0 <= self.label_smoothing < 1, "in [0, 1)"),
               patience=(self.patience is None or self.patience >= 1, ">= 1"),
               precision=(self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
               gpus=(self.gpus >= 0, ">= 0"),
               workers=(self.workers >= 1, ">= 1"),
               cpus_per_worker=(self.cpus_per_worker >= 1, ">= 1"),
               max_failures=(self.max_failures >= 0, ">= 0"),
               gpu_wait_s=(self.gpu_wait_s >= 0, ">= 0"))


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

    def __post_init__(self):
        _check("tune", self,
               trials=(self.trials >= 1, ">= 1"),
               max_epochs=(self.max_epochs >= 1, ">= 1"),
               grace_period=(1 <= self.grace_period <= self.max_epochs,
                             ">= 1 and <= tune.max_epochs"),
               gpus_per_trial=(self.gpus_per_trial >= 0, ">= 0"),
               workers_per_trial=(self.workers_per_trial >= 1, ">= 1"),
               cpus_per_worker=(self.cpus_per_worker >= 1, ">= 1"),
               max_concurrent=(self.max_concurrent is None or self.max_concurrent >= 1, ">= 1"),
               searcher=(self.searcher in ("random", "grid", "optuna"),
                         "random, grid or optuna"))


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
    runtime: Literal["torch", "onnx"] = "torch"  # the model runtime inside each actor

    def __post_init__(self):
        _check("score", self,
               review_threshold=(0 <= self.review_threshold <= 1, "in [0, 1]"),
               min_cells=(self.min_cells >= 0, ">= 0"),
               reference_ranges=(all(0 <= lo <= hi <= 100
                                     for lo, hi in self.reference_ranges.values()),
                                 "percent ranges with 0 <= low <= high <= 100"),
               batch_size=(self.batch_size >= 1, ">= 1"),
               run_date=(self.run_date is None or _is_date(self.run_date), "a date YYYY-MM-DD"),
               actors=(self.actors is None or self.actors >= 1, ">= 1"),
               runtime=(self.runtime in ("torch", "onnx"), "torch or onnx"))


def _is_date(text: str) -> bool:
    try:
        return dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with MLflow (``wbc_ray.tracking``): train, tune and evaluate."""

    enabled: bool = True  # false: log nothing (`--no-track`)
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else a local store beside the run
    experiment: str | None = None  # None: wbc-ray-train, wbc-ray-tune or wbc-ray-evaluate


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


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


def unknown_keys(cls: type, values: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, hint)`` for every key of ``values`` that ``cls`` has no field for."""
    if not (dataclasses.is_dataclass(cls) and isinstance(values, dict)):
        return []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1)
            out.append((key, f"unknown key; did you mean {close[0]}?" if close else
                        f"unknown key (known: {', '.join(fields)})"))
        elif dataclasses.is_dataclass(hints[k]):
            out += unknown_keys(hints[k], v, f"{key}.")
    return out


def from_dict(cls: type, values: dict[str, Any]):
    """Build a config dataclass, failing loudly on unknown keys, wrong types and bad ranges."""
    bad = unknown_keys(cls, values)
    if bad:
        raise ConfigError(*bad[0])
    try:
        return dacite.from_dict(cls, values, config=_DACITE)
    except dacite.WrongTypeError as e:
        raise ConfigTypeError(e.field_path,
                              f"expected {_type_name(e.field_type)}, got {e.value!r}") from None
    except dacite.MissingValueError as e:
        raise ConfigError(e.field_path, "missing value") from None
    except dacite.DaciteError as e:
        raise ValueError(f"invalid {cls.__name__}: {e}") from None


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


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
    """Defaults < YAML at ``path`` < ``overrides`` (``{"train": {"epochs": 3}}``; None = unset).

    Errors name the file, the line and the dotted key:
    ``runs/x.yaml:3: train.epoch: unknown key; did you mean epochs?``.
    """
    values: dict[str, Any] = {}
    text = ""
    if path:
        from wbc_ray.storage import read_text

        try:
            text = read_text(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        try:
            loaded = load_yaml(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            start = getattr(e, "context_mark", None)  # an unclosed { or [: where it opened
            if mark and start and start.line != mark.line and getattr(e, "context", None):
                problem += f" ({e.context} opened at line {start.line + 1})"
            raise ConfigError("yaml", f"{problem}", where=f" (in {path}{line})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        values = loaded
    values = merge(values, overrides or {})
    try:
        return from_dict(RunConfig, values)
    except ConfigError as e:
        line = _line_of(text, e.key) if text else None
        where = f" (in {path}{f':{line}' if line else ''})" if path else ""
        raise type(e)(e.key, e.message, where) from None


def _line_of(text: str, dotted: str) -> int | None:
    """1-based line of ``dotted`` (``train.epochs``) in YAML ``text``; its parent's if absent."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
