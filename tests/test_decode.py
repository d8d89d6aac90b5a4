"""Pure decode + resize on synthetic images: formats, modes, fast path, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wbc_ray.data.decode import BadImage, decode_resize


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _smooth_rgb(w=320, h=240, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 23 + rng.uniform(0, 6)),
                     128 + 100 * np.cos(yy / 17 + rng.uniform(0, 6)),
                     128 + 80 * np.sin((xx + yy) / 31)], -1)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF"])
def test_formats_decode_to_rgb_uint8_at_target_size(fmt):
    out = decode_resize(_encode(_smooth_rgb(), fmt), 100)
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    assert out.std() > 10  # real content, not a blank


def test_jpeg_draft_fast_path_stays_close_to_full_decode():
    data = _encode(_smooth_rgb(), "JPEG", quality=92)
    fast = decode_resize(data, 100, fast=True).astype(int)
    ref = decode_resize(data, 100, fast=False).astype(int)
    assert np.abs(fast - ref).mean() < 3.0
    assert np.abs(fast - ref).max() < 40


def test_draft_really_reduces_decode_scale():
    im = Image.open(io.BytesIO(_encode(_smooth_rgb(640, 480), "JPEG")))
    im.draft("RGB", (100, 100))
    assert im.size[0] < 640  # PIL decoded in the DCT domain at 1/2..1/8


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "CMYK"])
def test_modes_are_converted_to_rgb(mode):
    rgb = _smooth_rgb(64, 48)
    if mode == "I;16":
        arr = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        im = Image.frombytes("I;16", arr.shape[::-1], arr.astype("<u2").tobytes())
    elif mode == "P":
        im = rgb.quantize(64)
    else:
        im = rgb.convert(mode)
    fmt = "TIFF" if mode in ("I;16", "CMYK") else "PNG"
    out = decode_resize(_encode(im, fmt), 32)
    assert out.shape == (32, 32, 3)
    if mode in ("L", "I;16"):  # grey stays grey and keeps its range (16-bit scaled, not clipped)
        assert np.array_equal(out[..., 0], out[..., 1])
        ref = decode_resize(_encode(rgb.convert("L"), "PNG"), 32)[..., 0].astype(int)
        assert np.abs(out[..., 0].astype(int) - ref).mean() < 2


def test_rgba_transparent_pixels_become_white():
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    out = decode_resize(_encode(im, "PNG"), 10)
    assert (out == 255).all()


def test_crop_box_selects_region():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 100:] = 255  # right half white
    data = _encode(Image.fromarray(arr), "PNG")
    assert decode_resize(data, 10, box=(110, 10, 190, 90)).min() == 255
    assert decode_resize(data, 10, box=(0, 0, 90, 100)).max() == 0


def test_crop_box_on_jpeg_fast_path_matches_reference():
    data = _encode(_smooth_rgb(640, 480), "JPEG", quality=95)
    box = (200, 150, 420, 360)
    fast = decode_resize(data, 100, box=box, fast=True).astype(int)
    ref = decode_resize(data, 100, box=box, fast=False).astype(int)
    assert np.abs(fast - ref).mean() < 3.0


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
])
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_resize(data, 100)


def test_truncated_jpeg_is_rejected():
    data = _encode(_smooth_rgb(), "JPEG")
    with pytest.raises(BadImage, match="unreadable|truncated"):
        decode_resize(data[: len(data) // 2], 100)


def test_decompression_bomb_is_rejected_before_decoding():
    data = _encode(Image.new("L", (3000, 3000)), "PNG")  # tiny file, 9 Mpx
    with pytest.raises(BadImage, match="too large"):
        decode_resize(data, 100, max_pixels=1_000_000)


def test_empty_crop_box_is_rejected():
    with pytest.raises(BadImage, match="crop box"):
        decode_resize(_encode(_smooth_rgb(64, 64), "PNG"), 10, box=(70, 70, 90, 90))
