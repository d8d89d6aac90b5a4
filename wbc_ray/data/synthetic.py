"""A deterministic, procedurally drawn white-blood-cell image set (the demo's default data).

Each image is a stained smear field: pink background, red cells, and one white cell in
the middle whose nucleus and cytoplasm follow the textbook look of its type. Classes are
distinct enough to learn in a few epochs; positions, sizes, colours and noise vary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wbc_ray.classes import PAPER_CLASSES

# (cell radius range, cytoplasm RGB, nucleus RGB, granule RGB or None)
_LOOK = {
    "NEUTROPHIL": ((34, 42), (222, 196, 214), (92, 40, 140), (200, 160, 200)),
    "EOSINOPHIL": ((36, 44), (236, 150, 120), (100, 45, 150), (230, 90, 60)),
    "LYMPHOCYTE": ((24, 30), (170, 180, 230), (60, 30, 120), None),
    "MONOCYTE": ((42, 52), (180, 175, 205), (120, 80, 170), None),
    "BASOPHIL": ((30, 36), (190, 150, 210), (70, 20, 110), (40, 10, 70)),
}


def _nucleus(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
             colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    a0 = rng.uniform(0, 2 * math.pi)
    if kind == "NEUTROPHIL":  # 3-5 small lobes on an arc
        n = int(rng.integers(3, 6))
        for i in range(n):
            a = a0 + i * 1.3
            x, y, lr = cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a), 0.26 * r
            draw.ellipse((x - lr, y - lr, x + lr, y + lr), fill=colour)
    elif kind == "EOSINOPHIL":  # two lobes
        for s in (-1, 1):
            x, y, lr = cx + s * 0.35 * r * math.cos(a0), cy + s * 0.35 * r * math.sin(a0), 0.3 * r
            draw.ellipse((x - lr, y - lr, x + lr, y + lr), fill=colour)
    elif kind == "LYMPHOCYTE":  # one large round nucleus
        lr = 0.82 * r
        draw.ellipse((cx - lr, cy - lr, cx + lr, cy + lr), fill=colour)
    elif kind == "MONOCYTE":  # kidney shape: an ellipse with a bite taken out
        lr = 0.6 * r
        draw.ellipse((cx - lr, cy - 0.8 * lr, cx + lr, cy + 0.8 * lr), fill=colour)
        bx, by = cx + 0.7 * lr * math.cos(a0), cy + 0.7 * lr * math.sin(a0)
        draw.ellipse((bx - 0.45 * lr, by - 0.45 * lr, bx + 0.45 * lr, by + 0.45 * lr),
                     fill=(180, 175, 205))
    else:  # BASOPHIL: nucleus hidden under dark granules
        lr = 0.5 * r
        draw.ellipse((cx - lr, cy - lr, cx + lr, cy + lr), fill=colour)


def draw_cell(kind: str, seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """One synthetic smear crop (RGB) centred on a white cell of ``kind``."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = tuple(int(v) for v in rng.normal((235, 205, 210), 6).clip(0, 255))
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 9))):  # red cells
        x, y, rr = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(12, 18)
        d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=(int(rng.uniform(200, 225)), 120, 130))
    (rlo, rhi), cyto, nuc, gran = _LOOK[kind]
    scale = min(w, h) / 120
    r = rng.uniform(rlo, rhi) * scale
    cx, cy = w / 2 + rng.normal(0, 6), h / 2 + rng.normal(0, 6)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.normal(cyto, 5)))
    if gran is not None:
        for _ in range(120 if kind == "BASOPHIL" else 60):
            a, rad = rng.uniform(0, 2 * math.pi), r * math.sqrt(rng.uniform(0, 0.9))
            x, y = cx + rad * math.cos(a), cy + rad * math.sin(a)
            d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=gran)
    _nucleus(d, kind, cx, cy, r, tuple(int(v) for v in rng.normal(nuc, 6)), rng)
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    noise = rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(
        np.uint8))


def make_dataset(root: str, per_class: int = 60, classes: Sequence[str] = PAPER_CLASSES,
                 seed: int = 0, split_level: bool = False) -> str:
    """Write ``<root>/<CLASS>/*.jpeg`` (or ``<root>/{TRAIN,TEST}/<CLASS>/*``); idempotent."""
    for ci, kind in enumerate(classes):
        for i in range(per_class):
            split = ("TEST" if i % 5 == 0 else "TRAIN") if split_level else ""
            folder = os.path.join(root, split, kind)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{kind.lower()}_{i:05d}.jpeg")
            if not os.path.exists(path):
                draw_cell(kind, seed * 1_000_003 + ci * 100_003 + i).save(path, quality=90)
    return root


def make_archive(root: str, samples: dict[str, dict[str, int]], seed: int = 1) -> str:
    """Write ``<root>/<sample_id>/cell_NNNN.jpeg`` with the given cells per class per sample."""
    for si, (sample, mix) in enumerate(sorted(samples.items())):
        folder = os.path.join(root, sample)
        os.makedirs(folder, exist_ok=True)
        i = 0
        for kind, n in mix.items():
            for _ in range(n):
                path = os.path.join(folder, f"cell_{i:04d}.jpeg")
                if not os.path.exists(path):
                    draw_cell(kind, 7_000_000 + seed * 100_000 + si * 1000 + i).save(
                        path, quality=90)
                i += 1
    return root
