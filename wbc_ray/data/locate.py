"""Find the white cell in a smear image by the stain colour of its nucleus.

Leukocyte nuclei take up the azure/haematoxylin part of a Romanowsky (Wright, Giemsa,
May-Grünwald) stain and are the bluest thing in the field: red cells are pink or lilac, the
background is white. The locator thresholds ``B - G`` (blue excess) per image with a
three-class Otsu split (background / red cells and cytoplasm / nucleus) of the pixels that
are not padding, so it follows each image's staining and white balance rather than levels
tuned to one data set. It works on a copy reduced by an integer factor to about
``WORK_SIDE`` pixels, so sizes are relative to the frame: BCCD 640x480 fields, Kaggle
320x240 frames and LISC 224x224 crops look alike to it. Lobes of a segmented nucleus are
joined by taking every sizeable component near the largest one.

The cell extent is estimated from the nucleus box (``CELL_PER_NUCLEUS``); the model's window
is ``context`` times that, square, centred on the nucleus and kept inside the image.
``bench/locator_iou.py`` measures it against the BCCD WBC boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in input pixels

WORK_SIDE = 160  # the locator's working copy: longer side reduced by an integer factor to ~this
# Cell side over the nucleus box's longer side. The one number fitted to data: the value
# that maximises the median IoU with the BCCD WBC boxes (bench/locator_iou.py --sweep);
# their ratio is 1.10-1.58 (5th-95th percentile), median 1.28; a square of the median
# ratio overshoots the rectangular boxes, so the best square is a little smaller.
CELL_PER_NUCLEUS = 1.25
# Window side over the cell side. The window must hold the whole cell despite the cell
# estimate's error: the matched BCCD WBC box lies >= 95% inside it in 98.0% of the fields at
# 1.4, 99.4% at 1.6, 99.7% at 1.8 (bench/locator_iou.py --sweep). Which context classifies
# best is a training question, not measured here.
DEFAULT_CONTEXT = 1.6
# Nucleus mean blue excess over the field's median, in 8-bit levels, below which nothing
# counts as found. The one absolute level: the lowest nucleus scores are 47 (LISC), 62
# (Kaggle TRAIN sample), 64 (BCCD); WBC-free crops of the BCCD fields score 20 (median).
MIN_EXCESS = 35.0
MIN_AREA = 0.003  # nucleus area bounds, as fractions of the (valid) image area
MAX_AREA = 0.6
LOBE_AREA = 0.04  # a lobe: a component of >= this fraction of the largest one's area ...
LOBE_GAP = 0.45  # ... within this many of the largest one's equivalent diameters of it
PADDING = 35  # pixels whose channels are all below this are rotation/letterbox padding


@dataclass(frozen=True)
class Located:
    """Where the white cell is; every box is (x0, y0, x1, y1) in the input's pixels."""

    found: bool  # False: no nucleus-like region; the caller uses the whole image
    box: Box | None  # square window of side context x cell side, inside the image
    cell: Box | None = None  # the cell itself (no context margin): a square, clipped to the image
    nucleus: Box | None = None  # bounding box of the nucleus (all lobes)
    score: float = 0.0  # nucleus mean blue excess over the field's median (8-bit levels)


NOT_FOUND = Located(found=False, box=None)


def locate_wbc(rgb: np.ndarray, context: float = DEFAULT_CONTEXT) -> Located:
    """Locate the white cell in an (H, W, 3) uint8 RGB image by its nucleus.

    Returns :data:`NOT_FOUND`-like ``Located(found=False, box=None)`` when no region is
    blue enough (by ``MIN_EXCESS``) and of a plausible size (``MIN_AREA``..``MAX_AREA`` of
    the frame): blank fields, red cells only, a uniformly tinted image.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got {getattr(rgb, 'shape', rgb)!r}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"expected uint8 RGB, got dtype {rgb.dtype}")
    if not context > 0:
        raise ValueError(f"context must be > 0, got {context!r}")
    h, w = rgb.shape[:2]
    k = max(1, max(h, w) // WORK_SIDE)
    small = np.asarray(Image.fromarray(rgb).reduce(k)) if k > 1 else rgb
    mask, score = _nucleus_mask(small)
    if mask is None:
        return NOT_FOUND
    ys, xs = np.nonzero(mask)
    sx, sy = w / small.shape[1], h / small.shape[0]
    nucleus = (float(xs.min() * sx), float(ys.min() * sy),
               float((xs.max() + 1) * sx), float((ys.max() + 1) * sy))
    cx, cy = (nucleus[0] + nucleus[2]) / 2, (nucleus[1] + nucleus[3]) / 2
    side = CELL_PER_NUCLEUS * max(nucleus[2] - nucleus[0], nucleus[3] - nucleus[1])
    # a cell cut by the frame edge ends there: clip its extent to the image
    cell = (max(cx - side / 2, 0.0), max(cy - side / 2, 0.0),
            min(cx + side / 2, float(w)), min(cy + side / 2, float(h)))
    return Located(found=True, box=_square_inside(cx, cy, side * context, w, h),
                   cell=cell, nucleus=nucleus, score=score)


def _nucleus_mask(small: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The nucleus (all lobes) as a boolean mask of ``small``, and its blue excess."""
    valid = small.max(axis=2) >= PADDING
    if valid.sum() < 64:
        return None, 0.0
    px = small.astype(np.float32)
    blue = px[..., 2] - px[..., 1]
    median = float(np.median(blue[valid]))
    blue[~valid] = median  # padding neither attracts the threshold nor the mask
    blue = ndi.gaussian_filter(blue, 1.0)
    values = blue[valid]
    if values.max() - median < MIN_EXCESS:
        return None, 0.0
    mask = ndi.binary_opening(blue > _nucleus_level(values)) & valid
    labels, n = ndi.label(mask)
    if n == 0:
        return None, 0.0
    areas = ndi.sum_labels(mask, labels, np.arange(1, n + 1))
    big = int(np.argmax(areas)) + 1
    gap = ndi.distance_transform_edt(labels != big)
    near = np.full(n + 1, np.inf)
    np.minimum.at(near, labels[mask], gap[mask])  # each component's distance to the largest
    near = near[1:]
    keep = (areas >= LOBE_AREA * areas[big - 1]) & (near <= LOBE_GAP * 2 * np.sqrt(
        areas[big - 1] / np.pi))
    nucleus = np.concatenate([[False], keep])[labels]
    area = nucleus.sum() / valid.sum()
    score = float(blue[nucleus].mean() - median)
    if score < MIN_EXCESS or not MIN_AREA <= area <= MAX_AREA:
        return None, score
    return nucleus, score


def _nucleus_level(values: np.ndarray) -> float:
    """The upper of three Otsu classes: red cells are lilac in some stains (LISC), and a
    two-class split would put them with the nucleus. Plain Otsu when there are too few
    distinct levels for three classes (synthetic images)."""
    try:
        return float(threshold_multiotsu(values, 3, nbins=64)[-1])
    except ValueError:
        return float(threshold_otsu(values))


def _square_inside(cx: float, cy: float, side: float, w: int, h: int) -> Box:
    """A square of ``side`` centred at (cx, cy), shrunk to fit and shifted into the image."""
    side = min(float(side), float(w), float(h))
    x0 = min(max(float(cx) - side / 2, 0.0), w - side)
    y0 = min(max(float(cy) - side / 2, 0.0), h - side)
    return (x0, y0, x0 + side, y0 + side)
