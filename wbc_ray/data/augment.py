"""Per-epoch random augmentation on a batch tensor (runs inside the training step)."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from wbc_ray.data.stain import hed_jitter


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and 0/90/180/270-degree rotations of an (N, C, H, W) square batch.

    These are the label-preserving augmentations the paper applies to LISC; a cell
    has no canonical orientation on a slide. Each image gets its own draw.
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    out = x.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return out


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    """n draws from U(lo, hi) on the CPU generator ``g``, moved to ``device``."""
    return (lo + (hi - lo) * torch.rand(n, generator=g)).to(device)


@functools.cache
def _kornia() -> SimpleNamespace:
    """kornia's functional ops, imported on first use: the import takes ~1 s and warns
    (FutureWarning about torch.jit.script), and plain runs never need it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from kornia.enhance import (
            adjust_brightness_accumulative,
            adjust_contrast_with_mean_subtraction,
            adjust_hue,
            adjust_saturation_with_gray_subtraction,
        )
        from kornia.filters import gaussian_blur2d
        from kornia.geometry.transform import crop_and_resize
    return SimpleNamespace(brightness=adjust_brightness_accumulative,
                           contrast=adjust_contrast_with_mean_subtraction,
                           saturation=adjust_saturation_with_gray_subtraction,
                           hue=adjust_hue, blur=gaussian_blur2d, crop=crop_and_resize)


@dataclass(frozen=True)
class Augment:
    """Random colour and scale augmentation of float (N, 3, H, W) batches in [0, 1].

    ``recipe(x, generator=g)`` returns the same shape and dtype, still in [0, 1]. Every
    random draw comes from ``g`` (a CPU ``torch.Generator``; the batch may live on any
    device), one set per image, so a seeded generator reproduces a run exactly. The image
    ops are kornia's functional ones (the same that ``kornia.augmentation.ColorJitter`` and
    ``RandomResizedCrop`` use), fed with parameters drawn here instead of from torch's global
    RNG. A field at its neutral value (0, or None for the crop) turns that step off.
    """

    hed_alpha: float = 0.0  # HED jitter: per-channel stain scale U(1-a, 1+a) (Tellez et al.)
    hed_beta: float = 0.0  # ... and shift U(-b, b), in skimage rgb2hed units
    brightness: float = 0.0  # multiply by U(1-b, 1+b)
    contrast: float = 0.0  # scale the deviation from the image mean by U(1-c, 1+c)
    saturation: float = 0.0  # blend with the grey image by U(1-s, 1+s)
    hue: float = 0.0  # rotate the hue by U(-h, h) of a full turn
    blur_p: float = 0.0  # probability of a gaussian blur (focus), per image
    blur_sigma: tuple[float, float] = (0.003, 0.012)  # its sigma, as a fraction of the side
    crop_scale: tuple[float, float] | None = None  # random resized crop: area fraction range
    crop_ratio: tuple[float, float] = (0.85, 1.18)  # ... and aspect ratio (w/h) range

    @classmethod
    def robust(cls, *, colour: bool, scale: bool) -> Augment:
        """The recipe for cross-lab robustness: stain/colour/focus and/or scale/centring.

        ``colour``: HED jitter plus brightness/contrast/saturation/hue jitter and a blur in
        one image of five. ``scale``: crops of 60-100% of the area, aspect 0.85-1.18,
        resized back, which also mimics a higher magnification and an off-centre cell.
        """
        spec = {}
        if colour:
            spec.update(hed_alpha=0.1, hed_beta=0.01, brightness=0.15, contrast=0.15,
                        saturation=0.15, hue=0.03, blur_p=0.2)
        if scale:
            spec.update(crop_scale=(0.6, 1.0))
        return cls(**spec)

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        out = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self.crop_scale is not None:
            out = self._crop(out, generator)
        if self.hed_alpha or self.hed_beta:
            out = hed_jitter(out, generator, alpha=self.hed_alpha, beta=self.hed_beta)
        out = self._jitter(out, generator)
        if self.blur_p:
            out = self._blur(out, generator)
        return out.clamp(0.0, 1.0).to(x.dtype)

    def _jitter(self, x: torch.Tensor, g) -> torch.Tensor:
        n, dev, k = x.shape[0], x.device, _kornia()
        for strength, op in ((self.brightness, k.brightness), (self.contrast, k.contrast),
                             (self.saturation, k.saturation)):
            if strength:
                x = op(x, _uniform(n, 1.0 - strength, 1.0 + strength, g, dev)).clamp(0, 1)
        if self.hue:
            x = k.hue(x, 2 * math.pi * _uniform(n, -self.hue, self.hue, g, dev))
        return x

    def _blur(self, x: torch.Tensor, g) -> torch.Tensor:
        n, side = x.shape[0], min(x.shape[-2:])
        chosen = torch.rand(n, generator=g) < self.blur_p
        sigma = side * _uniform(n, *self.blur_sigma, g, "cpu")
        idx = chosen.nonzero().flatten()
        if len(idx) == 0:
            return x
        k = 2 * math.ceil(3 * float(sigma[idx].max())) + 1
        s = sigma[idx].to(x.device, x.dtype).view(-1, 1).expand(-1, 2)
        x = x.clone()
        x[idx.to(x.device)] = _kornia().blur(x[idx.to(x.device)], (k, k), s)
        return x

    def _crop(self, x: torch.Tensor, g) -> torch.Tensor:
        """Per-image random crop of ``crop_scale`` of the area, resized back to (H, W)."""
        n, (h, w) = x.shape[0], x.shape[-2:]
        area = _uniform(n, *self.crop_scale, g, "cpu")
        lo, hi = (math.log(r) for r in self.crop_ratio)
        ratio = torch.exp(_uniform(n, lo, hi, g, "cpu"))
        cw = (torch.sqrt(area * ratio) * w).clamp(2, w)
        ch = (torch.sqrt(area / ratio) * h).clamp(2, h)
        x0 = torch.rand(n, generator=g) * (w - cw)
        y0 = torch.rand(n, generator=g) * (h - ch)
        x1, y1 = x0 + cw - 1, y0 + ch - 1  # kornia's corners are pixel centres (inclusive)
        boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                             torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], 1)
        return _kornia().crop(x, boxes.to(x.device, x.dtype), (h, w), mode="bilinear",
                              align_corners=True)
