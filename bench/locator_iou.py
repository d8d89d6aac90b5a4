"""The white-cell locator against the BCCD WBC boxes, plus its hit rate on other sets.

    python bench/locator_iou.py [--side 400] [--kaggle 400] [--sweep]

For every ``originals/JPEGImages/*.jpg`` whose ``originals/Annotations/*.xml`` has WBC
boxes, ``locate_wbc`` runs on the field (reduced to ``--side`` pixels on its longer side
first when given, as ``decode_preprocessed`` does with ``work_side=400``) and its CELL box
(``Located.cell``: a square of ``CELL_PER_NUCLEUS`` x the nucleus box's longer side,
centred on the nucleus; the window without the context margin) is compared with the
image's WBC boxes, in the field's pixels:

- per image: IoU with the best-matching WBC box (a single-cell locator can match only
  one of the 14 fields with two cells), and the fraction with IoU >= 0.5;
- per box: every WBC box with the one located cell (the second cell of a field counts);
- coverage: how often the best-matching WBC box lies >= 95% inside the context window
  (``DEFAULT_CONTEXT``), i.e. the window holds the whole cell;
- false positives: ``found`` on the quarter-size crops of the fields that touch no WBC box;
- ms per image of ``locate_wbc`` alone (decoded arrays in memory), wall and CPU time.

Then the fraction of ``found`` on a fixed sample of Kaggle TRAIN frames and on every
LISC crop, with how often the crop's centre lies inside the located cell box (LISC crops
are centred on their leukocyte). ``--sweep`` prints the per-image figures for other
``CELL_PER_NUCLEUS`` values (how that constant was chosen). Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from wbc_ray.data import locate as loc

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WBC_SHARED_DATA", REPO.parent / "shared" / "data"))
ORIGINALS = DATA / "kaggle-blood-cells" / "originals"
SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile")


def wbc_boxes(xml: Path) -> list[tuple[float, float, float, float]]:
    """The WBC boxes (xmin, ymin, xmax, ymax) of one Pascal-VOC annotation file."""
    out = []
    for obj in ET.parse(xml).getroot().iter("object"):
        if obj.findtext("name") == "WBC":
            b = obj.find("bndbox")
            out.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def annotated_fields() -> list[tuple[Path, list]]:
    pairs = []
    for xml in sorted((ORIGINALS / "Annotations").glob("*.xml")):
        jpg = ORIGINALS / "JPEGImages" / f"{xml.stem}.jpg"
        boxes = wbc_boxes(xml)
        if boxes and jpg.exists():
            pairs.append((jpg, boxes))
    return pairs


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def inside(box, window) -> float:
    """The fraction of ``box`` that lies inside ``window``."""
    ix = max(0.0, min(box[2], window[2]) - max(box[0], window[0]))
    iy = max(0.0, min(box[3], window[3]) - max(box[1], window[1]))
    return ix * iy / ((box[2] - box[0]) * (box[3] - box[1]))


def load(path: Path, side: int | None) -> tuple[np.ndarray, float]:
    """RGB array (reduced to ``side`` on the longer side when given) and its scale."""
    im = Image.open(path).convert("RGB")
    scale = 1.0
    if side and max(im.size) > side:
        scale = side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    return np.asarray(im), scale


def scaled(box, s: float):
    return None if box is None else tuple(v / s for v in box)


def cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    return (f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} cores; "
            f"SIMD flags: {' '.join(f for f in SIMD if f in flags) or 'none of ' + str(SIMD)}")


def bccd(side: int | None, sweep: bool) -> None:
    fields = annotated_fields()
    images = [load(p, side) for p, _ in fields]
    results, wall, cpu_s = [], 0.0, 0.0
    for rgb, _ in images:
        t0, c0 = time.perf_counter(), time.process_time()
        results.append(loc.locate_wbc(rgb))
        wall += time.perf_counter() - t0
        cpu_s += time.process_time() - c0
    per_image, per_box, covered = [], [], []
    for r, (_, s), (_, boxes) in zip(results, images, fields, strict=True):
        cell = scaled(r.cell, s)
        ious = [iou(cell, b) if r.found else 0.0 for b in boxes]
        per_image.append(max(ious))
        per_box += ious
        covered.append(_covered(r, s, boxes))
    n = len(fields)
    print(f"BCCD originals: {n} fields with {len(per_box)} WBC boxes, locator input "
          f"{'full size' if not side else f'longer side {side}'}; found "
          f"{sum(r.found for r in results)}/{n}")
    print(f"  per image (best box): IoU>=0.5 {np.mean(np.array(per_image) >= 0.5):.3f}, "
          f"median IoU {statistics.median(per_image):.3f}")
    print(f"  per box:              IoU>=0.5 {np.mean(np.array(per_box) >= 0.5):.3f}, "
          f"median IoU {statistics.median(per_box):.3f}")
    print(f"  best-matching box >=95% inside the context={loc.DEFAULT_CONTEXT} window: "
          f"{np.mean(covered):.3f}")
    print(f"  locate_wbc: {1000 * wall / n:.2f} ms/image wall, {1000 * cpu_s / n:.2f} ms/image "
          f"CPU ({images[0][0].shape[1]}x{images[0][0].shape[0]} input)")
    free = [loc.locate_wbc(crop).found for crop in wbc_free_crops(images, fields)]
    print(f"  WBC-free quarter-field crops: found (false positives: mostly platelets) "
          f"{np.mean(free):.3f} of {len(free)}")
    if sweep:
        for f in (1.0, 1.1, 1.2, 1.25, 1.3, 1.4, 1.5):
            best = [_best_iou(r, rgb, s, boxes, f) for r, (rgb, s), (_, boxes) in
                    zip(results, images, fields, strict=True)]
            print(f"  sweep CELL_PER_NUCLEUS={f}: IoU>=0.5 {np.mean(np.array(best) >= 0.5):.3f}"
                  f", median {statistics.median(best):.3f}")
        for c in (1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0):
            cover = [_covered(loc.locate_wbc(rgb, context=c), s, boxes)
                     for (rgb, s), (_, boxes) in zip(images, fields, strict=True)]
            print(f"  sweep context={c}: best-matching box >=95% inside the window "
                  f"{np.mean(cover):.3f}")


def _covered(r: loc.Located, s: float, boxes) -> bool:
    """Whether the WBC box that best matches the located cell lies >= 95% in the window."""
    if not r.found:
        return False
    best = max(boxes, key=lambda b: iou(scaled(r.cell, s), b))
    return inside(best, scaled(r.box, s)) >= 0.95


def wbc_free_crops(images, fields) -> list[np.ndarray]:
    """Half-width, half-height crops (3x3 grid, half-overlapping) that touch no WBC box."""
    out = []
    for (rgb, s), (_, boxes) in zip(images, fields, strict=True):
        h, w = rgb.shape[:2]
        for y in (0, h // 4, h // 2):
            for x in (0, w // 4, w // 2):
                crop = ((x / s, y / s, (x + w // 2) / s, (y + h // 2) / s))
                if not any(inside(b, crop) > 0 for b in boxes):
                    out.append(rgb[y:y + h // 2, x:x + w // 2])
    return out


def _best_iou(r: loc.Located, rgb: np.ndarray, s: float, boxes, factor: float) -> float:
    """The per-image IoU had the cell been ``factor`` x the nucleus box (as locate_wbc)."""
    if not r.found:
        return 0.0
    x0, y0, x1, y1 = scaled(r.nucleus, s)
    w, h = rgb.shape[1] / s, rgb.shape[0] / s
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, factor * max(x1 - x0, y1 - y0) / 2
    cell = (max(cx - half, 0.0), max(cy - half, 0.0), min(cx + half, w), min(cy + half, h))
    return max(iou(cell, b) for b in boxes)


def hit_rates(kaggle_n: int) -> None:
    """``found`` on a seeded sample of Kaggle TRAIN frames and on every LISC crop."""
    train = sorted((DATA / "kaggle-blood-cells" / "images" / "TRAIN").glob("*/*.jpeg"))
    sample = random.Random(0).sample(train, min(kaggle_n, len(train)))
    if sample:
        frames = [load(p, None)[0] for p in sample]
        t0 = time.process_time()
        found = [loc.locate_wbc(rgb).found for rgb in frames]
        ms = 1000 * (time.process_time() - t0) / len(frames)
        print(f"Kaggle TRAIN 320x240: found {np.mean(found):.3f} of {len(sample)} (seeded "
              f"sample); locate_wbc {ms:.2f} ms/image CPU")
    lisc = sorted((DATA / "lisc-crops").glob("*/*.png"))
    found = centred = 0
    for p in lisc:
        rgb = load(p, None)[0]
        r = loc.locate_wbc(rgb)
        found += r.found
        h, w = rgb.shape[:2]
        centred += r.found and r.cell[0] <= w / 2 <= r.cell[2] and r.cell[1] <= h / 2 <= r.cell[3]
    print(f"LISC crops 224x224: found {found / len(lisc):.3f}, crop centre inside the cell box "
          f"{centred / len(lisc):.3f} of {len(lisc)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=None,
                    help="reduce the BCCD fields to this longer side first (decode uses 400)")
    ap.add_argument("--kaggle", type=int, default=400, help="Kaggle TRAIN frames to sample")
    ap.add_argument("--sweep", action="store_true", help="also try other CELL_PER_NUCLEUS")
    args = ap.parse_args()
    print(cpu())
    bccd(args.side, args.sweep)
    hit_rates(args.kaggle)


if __name__ == "__main__":
    main()
