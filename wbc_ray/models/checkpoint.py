"""Self-describing checkpoints: weights + everything needed to rebuild and use the model.

A checkpoint is a directory (local or object storage) with
- ``model.safetensors``: the weights (no pickle);
- ``meta.json``: model name and build arguments, class names, input size, normalisation,
  resolved config, data fingerprint, package version, epoch and metrics;
- ``train_state.pt`` (optional): optimizer state and RNG for resuming, loaded with
  ``torch.load(..., weights_only=True)``.
Scoring and evaluation need nothing but this directory.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from wbc_ray import __version__, storage
from wbc_ray.models.registry import build_model, get_spec

WEIGHTS, META, STATE = "model.safetensors", "meta.json", "train_state.pt"


@dataclass(frozen=True)
class CheckpointMeta:
    model: str
    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Deterministic preprocessing before the model (PreprocessConfig as a dict: locate,
    # context, normalise); evaluation and scoring apply exactly this.
    preprocess: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    version: str = __version__
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: str, classes, model_kwargs=None, input_size: int | None = None,
                  preprocess: dict | None = None, **kw) -> CheckpointMeta:
        spec = get_spec(model)
        return cls(model, tuple(classes), input_size or spec.input_size, spec.mean, spec.std,
                   dict(model_kwargs or {}), dict(preprocess or {}), **kw)


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(directory: str, model: nn.Module, meta: CheckpointMeta,
                    train_state: dict[str, Any] | None = None) -> str:
    """Write a checkpoint directory (local path or URI); returns it."""
    storage.write_bytes(storage.join(directory, WEIGHTS), st_save(_plain_state(model)))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        storage.write_bytes(storage.join(directory, STATE), buf.getvalue())
    # meta.json last: its presence marks a complete checkpoint
    storage.write_text(storage.join(directory, META), json.dumps(_jsonable(meta), indent=2))
    return directory


def _jsonable(meta: CheckpointMeta) -> dict[str, Any]:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(meta), default=list))


def read_meta(directory: str) -> CheckpointMeta:
    uri = storage.join(directory, META)
    try:
        raw = json.loads(storage.read_text(uri))
        raw["classes"], raw["mean"], raw["std"] = (tuple(raw[k]) for k in ("classes", "mean",
                                                                            "std"))
        return CheckpointMeta(**raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a wbc-ray checkpoint (no {META})") from None
    except (ValueError, TypeError, KeyError) as e:  # not JSON, not UTF-8, fields missing
        raise ValueError(f"{uri}: not a wbc-ray checkpoint description "
                         f"({type(e).__name__}: {e})") from None


def load_checkpoint(directory: str, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the checkpoint alone (no ImageNet download needed)."""
    meta = read_meta(directory)
    kwargs = dict(meta.model_kwargs)
    if "in_size" in kwargs:  # checkpoints written before the registry declared params
        kwargs["input_size"] = kwargs.pop("in_size")
    if "pretrained" in get_spec(meta.model).params:
        kwargs["pretrained"] = False  # the checkpoint's own weights replace ImageNet's
    model = build_model(meta.model, num_classes=len(meta.classes), **kwargs)
    # Restore the frozen/fine-tune recipe flag without re-downloading ImageNet weights.
    if hasattr(model, "frozen"):
        model.frozen = meta.model_kwargs.get("pretrained", True) and not meta.model_kwargs.get(
            "finetune", False)
    model.load_state_dict(load_state_dict(storage.join(directory, WEIGHTS)))
    return model.to(device).eval(), meta


def load_train_state(directory: str) -> dict[str, Any] | None:
    uri = storage.join(directory, STATE)
    if not storage.exists(uri):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A weights file (``.safetensors`` or a torch state dict) from a path or URI, safely."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {uri} does not exist") from None
    if uri.endswith(".safetensors"):
        return st_load(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{uri}: not a loadable weights file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{uri}: expected a state dict, got {type(state).__name__}")
    return state


def fingerprint(directory: str) -> str:
    """Short content hash of the weights: identifies 'scored by this checkpoint'."""
    return hashlib.sha256(storage.read_bytes(storage.join(directory, WEIGHTS))).hexdigest()[:16]


def is_checkpoint(directory: str) -> bool:
    return storage.exists(storage.join(directory, META))


def resolve_checkpoint(uri: str) -> str:
    """The checkpoint directory meant by ``uri``: a run directory (its ``best/``), a checkpoint
    directory, or a file inside one (``model.safetensors``, ``meta.json``); local or remote."""
    try:
        storage.check_readable(uri)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"checkpoint {e}") from None
    base = uri.rstrip("/")
    parent = base.rsplit("/", 1)[0] if "/" in base else "."
    for candidate in (base, storage.join(base, "best"), parent):
        if storage.exists(storage.join(candidate, META)):
            if candidate == parent and base.rsplit("/", 1)[-1] not in (WEIGHTS, META, STATE):
                break
            read_meta(candidate)
            check_weights(candidate)
            return candidate
    raise FileNotFoundError(f"{uri} is not a wbc-ray checkpoint: expected a run directory "
                            f"(with best/{META}), a checkpoint directory (with {META}) or its "
                            f"{WEIGHTS}")


def check_weights(directory: str) -> None:
    """Fail, naming the file, when the checkpoint's weights are missing, truncated or not
    safetensors; reads the header only (safetensors: 8-byte length, JSON header, data whose
    extent the header gives), so a big remote checkpoint is not downloaded twice."""
    uri = storage.join(directory, WEIGHTS)
    fs, path = storage.filesystem(uri)
    try:
        size = fs.size(path)
        with fs.open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 2 <= n <= size - 8 else None
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {directory} has no weights file {WEIGHTS}"
                                ) from None
    except (ValueError, UnicodeDecodeError):  # the header is not JSON
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{uri}: not a safetensors weights file (corrupt header)")
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, IndexError):
        raise ValueError(f"{uri}: not a safetensors weights file (corrupt header)") from None
    if size != 8 + n + end:
        raise ValueError(f"{uri}: truncated or corrupt weights file ({size} bytes, the header "
                         f"describes {8 + n + end})")


def best_checkpoint_path(run_dir: str) -> str:
    """``<run>/best`` holds the weights with the lowest validation loss."""
    return storage.join(run_dir, "best")


__all__ = ["CheckpointMeta", "save_checkpoint", "load_checkpoint", "read_meta", "fingerprint",
           "load_state_dict", "load_train_state", "is_checkpoint", "best_checkpoint_path",
           "resolve_checkpoint", "check_weights"]
