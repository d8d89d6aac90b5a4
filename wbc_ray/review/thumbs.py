"""Thumbnails and field images, made on demand from the scored URIs and cached in memory.

Only URIs read from the scored tables reach :func:`thumbnail`; the web layer never passes
a request's text to the filesystem. A missing or unreadable image becomes a placeholder,
so the cell stays reviewable.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict

from PIL import Image, ImageDraw, ImageOps

from wbc_ray import storage
from wbc_ray.schema import MAX_PIXELS

THUMB_SIZE = 112  # pixels, square
FIELD_MAX = 1200  # longest side of a field view
BOX_MARGIN = 0.15  # context around a box, as a fraction of its size
CACHE_BYTES = 32 * 2**20  # thumbnails kept in memory (LRU by bytes)


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise ValueError(f"image too large: {im.size[0]}x{im.size[1]}")
        im.load()
    return im.convert("RGB")


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _has_box(box) -> bool:
    return box is not None and all(v is not None and v == v for v in box)


def make_thumbnail(data: bytes, box=None, size: int = THUMB_SIZE) -> bytes:
    """A square JPEG of the cell (its box plus some context when given); raises on bad data."""
    im = _open(data)
    if _has_box(box):
        x0, y0, x1, y1 = (float(v) for v in box)
        mx, my = (x1 - x0) * BOX_MARGIN, (y1 - y0) * BOX_MARGIN
        w, h = im.size
        crop = (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my))
        if crop[2] - crop[0] < 2 or crop[3] - crop[1] < 2:
            raise ValueError(f"box {tuple(box)} is empty inside a {w}x{h} image")
        im = im.crop(tuple(int(round(v)) for v in crop))
    return _jpeg(ImageOps.pad(im, (size, size), color=(255, 255, 255)))


def make_field(data: bytes, longest: int = FIELD_MAX) -> tuple[bytes, int, int]:
    """(downscaled JPEG, original width, original height) of a slide field."""
    im = _open(data)
    w, h = im.size
    im.thumbnail((longest, longest))
    return _jpeg(im), w, h


def placeholder(size: int = THUMB_SIZE, text: str = "no image") -> bytes:
    im = Image.new("RGB", (size, size), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.line((0, 0, size, size), fill=(190, 190, 190), width=2)
    d.line((0, size, size, 0), fill=(190, 190, 190), width=2)
    d.rectangle((4, size // 2 - 9, size - 5, size // 2 + 9), fill=(235, 235, 235))
    d.text((8, size // 2 - 6), text, fill=(90, 90, 90))
    return _jpeg(im)


class ThumbCache:
    """Thread-safe LRU of thumbnail bytes, bounded by total size."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.placeholder = placeholder()

    def get(self, uri: str, box=None) -> tuple[bytes, bool]:
        """(JPEG bytes, ok); ok is False for the placeholder of a missing/unreadable image."""
        key = (uri, *(box or ()))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], True
        try:
            data = make_thumbnail(storage.read_bytes(uri), box)
        except Exception:  # missing, unreadable, bomb, empty box: a placeholder
            return self.placeholder, False
        with self._lock:
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes and self._items:
                self.bytes -= len(self._items.popitem(last=False)[1])
        return data, True
