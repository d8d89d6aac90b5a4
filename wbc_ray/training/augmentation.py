"""Which random colour/scale augmentation a training run applies (the recipes live in
``wbc_ray.data.augment``); ``None`` when the config asks for none."""

from __future__ import annotations

from collections.abc import Callable

import torch

from wbc_ray.config import TrainConfig


def batch_transform(t: TrainConfig, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """uint8 NHWC -> float NHWC in [0, 255] with the run's colour/scale augmentation, or None.

    The result stays in the uint8 value range and layout so the model's ``Normalise`` applies
    unchanged after it.
    """
    if not (t.colour_augment or t.scale_augment):
        return None
    from wbc_ray.data.augment import Augment

    recipe = Augment.robust(colour=t.colour_augment, scale=t.scale_augment)
    generator = torch.Generator().manual_seed(seed)

    def transform(images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = recipe(x, generator=generator)
        return (x * 255.0).permute(0, 2, 3, 1)

    return transform
