"""Model registry: name -> small builder. Models return logits only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: int  # square input side in pixels
    mean: tuple[float, float, float]  # per-channel normalisation applied to [0, 1] inputs
    std: tuple[float, float, float]
    builder: Callable[..., nn.Module]
    pretrained: bool  # whether it starts from ImageNet weights by default
    params: tuple[str, ...] = ()  # the ModelConfig fields the builder accepts as keywords


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, input_size: int, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
             pretrained: bool = False, params: tuple[str, ...] = ()):
    """Decorator adding a builder ``fn(num_classes, **kwargs) -> nn.Module`` to the registry.

    ``params`` names the keyword arguments the builder accepts (ModelConfig field names);
    :func:`build_model` refuses any other, so a setting is never silently ignored.
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, input_size, tuple(mean), tuple(std), fn, pretrained,
                                    tuple(params))
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}") from None


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model with ``num_classes`` output logits.

    ``kwargs`` go to the builder and must be among the model's declared ``params``
    (``hidden``/``dropout``/``input_size`` for ``paper_cnn``; ``pretrained``/``weights``/
    ``finetune`` for the torchvision baselines).
    """
    spec = get_spec(name)
    unknown = sorted(set(kwargs) - set(spec.params))
    if unknown:
        raise ValueError(f"model {name!r} does not take {unknown}; "
                         f"its parameters are {list(spec.params)}")
    return spec.builder(num_classes=num_classes, **kwargs)
