"""Pure image preprocessing: bytes -> RGB uint8 (H, W, 3) at the model's input size.

No Ray here: these functions are unit-tested on synthetic images and reused by
training, evaluation, scoring and the benchmarks.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFile

from wbc_ray.schema import MAX_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in source pixels


class BadImage(ValueError):
    """An input that cannot become a model input; the message is the quarantine reason."""


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, I;16, I, F) -> 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # slides are light
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def decode_resize(
    data: bytes,
    size: int | Sequence[int] = 100,
    box: Box | None = None,
    max_pixels: int = MAX_PIXELS,
    fast: bool = True,
) -> np.ndarray:
    """Decode image bytes, optionally crop ``box``, and resize to ``size`` (square or (w, h)).

    ``fast`` lets JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL ``draft``)
    when the result is still at least the target size; the output stays within a few
    grey levels of a full decode + resize. Raises :class:`BadImage` with a reason.
    """
    tw, th = (size, size) if isinstance(size, int) else tuple(size)
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"image too large: {w}x{h} pixels > max_pixels={max_pixels}")
            region = _check_box(box, w, h)
            if fast and im.format == "JPEG":
                rw, rh = region[2] - region[0], region[3] - region[1]
                im.draft("RGB", (max(1, int(tw * w / rw)), max(1, int(th * h / rh))))
            sx, sy = im.size[0] / w, im.size[1] / h  # draft scale
            im = _to_rgb(im)  # forces the (possibly truncated) decode
            crop = (region[0] * sx, region[1] * sy, region[2] * sx, region[3] * sy)
            out = im.resize((tw, th), Image.BILINEAR, box=crop, reducing_gap=None)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from e
    except Image.DecompressionBombWarning as e:
        raise BadImage(f"decompression bomb: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise BadImage("not an image (unidentified format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"unreadable image: {e}") from e
    return np.asarray(out, dtype=np.uint8)


def decode_preprocessed(data: bytes, size: int, box: Box | None = None,
                        max_pixels: int = MAX_PIXELS, preprocess: dict | None = None,
                        work_side: int = 400) -> tuple[np.ndarray, bool]:
    """:func:`decode_resize` plus the checkpoint's preprocessing: ``(image, located)``.

    ``preprocess`` (a ``PreprocessConfig`` as a dict): ``locate`` finds the white cell by
    its nucleus and crops a window of fixed size relative to the cell (the whole image when
    no nucleus is found: ``located`` is then False and the cell is still classified);
    ``normalise: reinhard`` maps the colours to a fixed reference. The locator works on a
    copy of at most ``work_side`` pixels on its longer side (Kaggle frames: 320x240 as-is).
    """
    spec = preprocess or {}
    if not spec.get("locate"):
        out, located = decode_resize(data, size, box=box, max_pixels=max_pixels), True
    else:
        from wbc_ray.data.locate import locate_wbc

        region = decode_resize(data, _work_size(data, box, work_side), box=box,
                               max_pixels=max_pixels)
        kw = {"context": spec["context"]} if spec.get("context") else {}
        found = locate_wbc(region, **kw)
        located = bool(found.found and found.box is not None)
        window = found.box if located else (0, 0, region.shape[1], region.shape[0])
        out = np.asarray(Image.fromarray(region).resize((size, size), Image.BILINEAR,
                                                        box=tuple(map(float, window))))
    if spec.get("normalise", "none") == "reinhard":
        from wbc_ray.data.stain import reinhard

        out = reinhard(out)
    return out, located


def _work_size(data: bytes, box: Box | None, side: int) -> tuple[int, int]:
    """The (w, h) at which the locator sees the (boxed) image: the longer side <= ``side``."""
    try:
        w, h = Image.open(io.BytesIO(data)).size
    except Exception as e:
        raise BadImage(f"not an image (unidentified format): {e}") from e
    x0, y0, x1, y1 = _check_box(box, w, h)
    rw, rh = x1 - x0, y1 - y0
    scale = min(1.0, side / max(rw, rh))
    return max(2, round(rw * scale)), max(2, round(rh * scale))


def _check_box(box: Box | None, w: int, h: int) -> Box:
    if box is None or any(v is None or v != v for v in box):  # None or NaN: whole image
        return (0.0, 0.0, float(w), float(h))
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise BadImage(f"crop box {tuple(box)} is empty inside a {w}x{h} image")
    return (x0, y0, x1, y1)


# Truncated JPEGs must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
