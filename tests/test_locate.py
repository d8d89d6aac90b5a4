"""The white-cell locator on real smears (BCCD fields with WBC boxes, LISC crops, Kaggle
frames) and through ``decode_preprocessed``; blank inputs are not found."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from wbc_ray.data.decode import decode_preprocessed, decode_resize
from wbc_ray.data.locate import locate_wbc


def _wbc_boxes(xml) -> list[tuple[float, ...]]:
    boxes = []
    for obj in ET.parse(xml).getroot().iter("object"):
        if obj.findtext("name") == "WBC":
            b = obj.find("bndbox")
            boxes.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bccd(kaggle):
    """60 annotated BCCD fields (every 6th with WBC boxes, by name) and their WBC boxes."""
    fields = []
    for xml in sorted((kaggle / "originals" / "Annotations").glob("*.xml")):
        jpg = kaggle / "originals" / "JPEGImages" / f"{xml.stem}.jpg"
        if jpg.exists() and (boxes := _wbc_boxes(xml)):
            fields.append((np.asarray(Image.open(jpg).convert("RGB")), boxes))
    assert len(fields) > 300
    return fields[::6][:60]


def test_cell_box_matches_the_annotated_wbc_on_bccd_fields(bccd):
    best = []
    for rgb, boxes in bccd:
        found = locate_wbc(rgb)
        best.append(max(_iou(found.cell, b) for b in boxes) if found.found else 0.0)
    assert len(best) == 60
    assert np.mean(np.array(best) >= 0.5) >= 0.85, sorted(best)[:10]


def test_window_is_a_square_inside_the_image_around_the_nucleus(bccd):
    for rgb, _ in bccd[:20]:
        h, w = rgb.shape[:2]
        found = locate_wbc(rgb)
        x0, y0, x1, y1 = found.box
        assert x1 - x0 == pytest.approx(y1 - y0)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        nx0, ny0, nx1, ny1 = found.nucleus
        assert x0 <= (nx0 + nx1) / 2 <= x1 and y0 <= (ny0 + ny1) / 2 <= y1
        wider = locate_wbc(rgb, context=2.2).box
        assert wider[2] - wider[0] >= x1 - x0  # more context, a larger (or capped) window


def test_same_field_at_half_the_magnification_gives_the_same_cell(bccd):
    for rgb, _ in bccd[:15]:
        half = np.asarray(Image.fromarray(rgb).reduce(2))
        full, small = locate_wbc(rgb), locate_wbc(half)
        assert small.found
        assert _iou(full.cell, [2 * v for v in small.cell]) > 0.7


def test_lisc_crops_are_found_and_centred(lisc):
    crops = sorted(lisc.glob("*/*.png"))[::5]
    hits = 0
    for path in crops:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        found = locate_wbc(rgb)
        h, w = rgb.shape[:2]
        hits += found.found and (found.cell[0] <= w / 2 <= found.cell[2]
                                 and found.cell[1] <= h / 2 <= found.cell[3])
    assert len(crops) >= 50
    assert hits / len(crops) >= 0.9


@pytest.mark.parametrize("colour", [(235, 232, 236), (120, 90, 200), (0, 0, 0)])
def test_blank_or_tinted_image_is_not_found(colour):
    rgb = np.full((240, 320, 3), colour, np.uint8)
    assert locate_wbc(rgb).found is False and locate_wbc(rgb).box is None
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 4, rgb.shape), 0, 255)
    assert locate_wbc(noisy.astype(np.uint8)).found is False


def test_fields_without_a_white_cell_are_mostly_not_found(bccd):
    """Half-size crops of the fields that touch no WBC box: red cells, plasma, platelets.
    Platelets stain like a small nucleus, so some are found (bench: ~10%)."""
    found = []
    for rgb, boxes in bccd:
        h, w = rgb.shape[:2]
        for y in (0, h // 4, h // 2):
            for x in (0, w // 4, w // 2):
                if not any(b[0] < x + w // 2 and b[2] > x and b[1] < y + h // 2 and b[3] > y
                           for b in boxes):
                    found.append(locate_wbc(rgb[y:y + h // 2, x:x + w // 2]).found)
    assert len(found) >= 60
    assert np.mean(found) <= 0.25


def test_decode_falls_back_to_the_whole_image_when_nothing_is_found():
    rgb = np.full((60, 80, 3), (230, 228, 233), np.uint8)
    rgb[:, 40:] = (200, 190, 195)  # two flat halves: structure, but no nucleus
    data = _png(rgb)
    out, located = decode_preprocessed(data, 32, preprocess={"locate": True})
    assert located is False
    np.testing.assert_array_equal(out, decode_resize(data, 32))


def test_decode_with_locate_crops_the_cell_of_a_kaggle_frame(kaggle):
    path = sorted((kaggle / "images" / "TRAIN" / "LYMPHOCYTE").glob("*.jpeg"))[0]
    data = path.read_bytes()
    out, located = decode_preprocessed(data, 100, preprocess={"locate": True})
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8 and located is True
    plain = decode_resize(data, 100)
    assert np.abs(out.astype(int) - plain.astype(int)).mean() > 5  # a crop, not the frame
    tight, _ = decode_preprocessed(data, 100, preprocess={"locate": True, "context": 1.1})
    assert not np.array_equal(tight, out)
    norm, located = decode_preprocessed(data, 100, preprocess={"locate": True,
                                                               "normalise": "reinhard"})
    assert norm.shape == (100, 100, 3) and located is True


def test_bad_arrays_are_rejected_with_their_shape_or_dtype():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        locate_wbc(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        locate_wbc(np.zeros((10, 10, 3), np.float32))
