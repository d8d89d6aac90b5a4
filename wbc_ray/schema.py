"""Names shared by every layer: record keys, box columns and input limits (one home each)."""

from __future__ import annotations

KEY = ("sample_id", "cell_id")  # identifies one cell (an image, or a box in a slide field)
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")  # a crop box in source pixels; NaN = whole image
MAX_PIXELS = 40_000_000  # larger images are quarantined as decompression bombs
