"""Stain colour: Reinhard normalisation (deterministic preprocessing) and HED jitter
(random augmentation).

``reinhard`` maps an image's colour distribution in CIE Lab (mean and standard deviation
per channel, Reinhard et al. 2001) onto the fixed reference ``REFERENCE_MEAN`` /
``REFERENCE_STD``, so that images from another lab, scanner or stain batch reach the model
with the colours it was trained on. ``hed_jitter`` is the stain-space augmentation of
Tellez et al. 2018 on batches of tensors: each image's optical density is split into
haematoxylin, eosin and residual channels (Ruifrok & Johnston's matrices, as in
``skimage.color.rgb2hed``), each scaled by ``U(1-alpha, 1+alpha)`` and shifted by
``U(-beta, beta)``. The HED basis is for H&E; on Romanowsky-stained blood smears it is no
exact unmixing but still a perturbation along plausible stain directions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import lab2rgb, rgb2lab
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

# Reference Lab statistics: the mean, over a seeded sample of 1,000 Kaggle TRAIN frames
# (../shared/data/kaggle-blood-cells/images/TRAIN, 320x240), of each frame's per-channel Lab
# mean and standard deviation over its smear pixels (see ``stain_pixels``), computed by
#   python -c "import random; from pathlib import Path; from wbc_ray.data.stain import \
#   reference_stats as r; p = sorted(Path('../shared/data/kaggle-blood-cells/images/TRAIN')\
#   .glob('*/*.jpeg')); print(r(random.Random(0).sample(p, 1000)))"
REFERENCE_MEAN = (76.92, 5.27, -1.46)
REFERENCE_STD = (8.4, 8.98, 11.65)
PADDING = 35  # pixels with every channel below this are rotation/letterbox padding
MIN_STD = 0.5  # Lab units: a flat channel is not stretched into noise

# skimage's rgb2hed works in log(rgb) / log(1e-6) units, and so does the jitter's beta: on
# the Kaggle/LISC images a nucleus reaches H ~ 0.06-0.07, the background H ~ 0.02.
_LOG_ADJUST = float(np.log(1e-6))
_HED_FROM_RGB = torch.tensor(hed_from_rgb, dtype=torch.float32)
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)


def stain_pixels(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that are part of the smear: not the black padding of
    rotated Kaggle frames or letterboxed LISC crops. White background stays in: leaving
    blown-out white out of the statistics moved the Kaggle TEST and LISC colours further
    apart, not closer (Lab distance of the two sets' mean colour, 80 images each, after
    normalisation: nucleus box 21.9 vs 17.1, the rest 7.2 vs 0.9)."""
    return rgb.max(axis=-1) >= PADDING


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel Lab mean and standard deviation over :func:`stain_pixels`, or None."""
    mask = stain_pixels(rgb)
    if mask.sum() < 16:
        return None
    lab = rgb2lab(rgb[mask][None])[0]
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard(rgb: np.ndarray) -> np.ndarray:
    """Map an (H, W, 3) uint8 RGB image's Lab statistics onto the reference; uint8 out.

    Deterministic: the same image always gives the same output. Padding pixels stay as they
    are; an image without stained pixels is returned unchanged (as a copy).
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got {getattr(rgb, 'shape', rgb)!r}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"expected uint8 RGB, got dtype {rgb.dtype}")
    stats = lab_stats(rgb)
    if stats is None:
        return rgb.copy()
    mean, std = stats
    scale = np.asarray(REFERENCE_STD) / np.maximum(std, MIN_STD)
    lab = (rgb2lab(rgb) - mean) * scale + np.asarray(REFERENCE_MEAN)
    with warnings.catch_warnings():  # out-of-gamut Lab values are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        out = np.round(np.clip(lab2rgb(lab), 0.0, 1.0) * 255.0).astype(np.uint8)
    padding = rgb.max(axis=-1) < PADDING
    out[padding] = rgb[padding]
    return out


def reference_stats(paths: Iterable[str | Path]) -> tuple[tuple, tuple]:
    """Mean per-image Lab mean and std over image files: how the reference was made."""
    stats = [s for p in paths if (s := lab_stats(np.asarray(Image.open(p).convert("RGB"))))]
    if not stats:
        raise ValueError("no image with stained pixels among the given paths")
    mean = np.mean([m for m, _ in stats], axis=0)
    std = np.mean([s for _, s in stats], axis=0)
    return tuple(round(float(v), 2) for v in mean), tuple(round(float(v), 2) for v in std)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """Float (N, 3, H, W) RGB in [0, 1] -> HED stain densities (skimage's units, unclipped)."""
    od = torch.log(x.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB.to(x.device, x.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`, clipped to [0, 1]."""
    od = torch.einsum("ndhw,dc->nchw", hed, _RGB_FROM_HED.to(hed.device, hed.dtype))
    return torch.exp(od * _LOG_ADJUST).clamp(0.0, 1.0)


def hed_jitter(x: torch.Tensor, generator: torch.Generator | None = None, *,
               alpha: float = 0.05, beta: float = 0.01) -> torch.Tensor:
    """Per-image random scale ``U(1-alpha, 1+alpha)`` and shift ``U(-beta, beta)`` of each
    HED channel of a float (N, 3, H, W) batch in [0, 1]; same shape and dtype out.

    The draws come from ``generator`` (a CPU generator; the batch may live on any device).
    ``alpha = beta = 0`` returns the input up to float rounding.
    """
    n = x.shape[0]
    scale = 1.0 + alpha * (2.0 * torch.rand(n, 3, generator=generator) - 1.0)
    shift = beta * (2.0 * torch.rand(n, 3, generator=generator) - 1.0)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    hed = rgb_to_hed(work)
    hed = hed * scale.to(x.device, work.dtype).view(n, 3, 1, 1) + \
        shift.to(x.device, work.dtype).view(n, 3, 1, 1)
    return hed_to_rgb(hed).to(x.dtype)
