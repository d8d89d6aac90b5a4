"""Ingest: wbc-ray's decode + resize vs a plain PIL loop vs raw JPEG decode.

    python bench/ingest.py [--n 2000]

All three read the same Kaggle JPEGs from the local disk in one run; ratios are what count.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from common import Timer, kaggle_files, table, write_section
from PIL import Image


def plain_pil(files: list[str]) -> int:
    """What a user would write: open, convert, resize."""
    out = [np.asarray(Image.open(f).convert("RGB").resize((100, 100))) for f in files]
    return len(out)


def raw_decode(files: list[str]) -> float:
    """The limit: seconds to fully decode the same bytes (no resize), one core."""
    blobs = [Path(f).read_bytes() for f in files]
    with Timer() as t:
        for b in blobs:
            Image.open(io.BytesIO(b)).load()
    return t.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    files = kaggle_files(args.n)
    for f in files:  # warm the page cache so every contender reads from memory
        Path(f).read_bytes()
    rows = []
    cores = os.cpu_count() or 1

    raw_s = raw_decode(files)
    rows.append({"path": "limit: raw JPEG decode (1 core, full size)", "img/s": len(files) / raw_s})

    with Timer() as t:
        plain_pil(files)
    plain = len(files) / t.seconds
    rows.append({"path": "plain PIL open+convert+resize (1 process)", "img/s": plain})

    from wbc_ray.data.decode import decode_resize

    with Timer() as t:
        for f in files:
            decode_resize(Path(f).read_bytes(), 100)
    rows.append({"path": "wbc-ray decode_resize, draft JPEG (1 process)",
                 "img/s": len(files) / t.seconds})

    import ray

    from wbc_ray.data.dataset import decode_dataset, decode_materialized
    from wbc_ray.ray_session import init_ray

    with Timer() as t_init:
        init_ray()
    recs = pd.DataFrame({"uri": files})
    with Timer() as t:
        n = decode_materialized(recs, 100).count()
    with Timer() as warm:
        decode_materialized(recs, 100).count()
    with Timer() as reserved:  # Ray Data's default: per-operator resource reservation on
        decode_dataset(recs, 100).materialize().count()
    rows.append({"path": f"wbc-ray Ray Data decode ({cores} cores, Ray up, workers warm)",
                 "img/s": n / warm.seconds})
    rows.append({"path": f"same, Ray Data's default op resource reservation on ({cores} cores, "
                         "workers warm; before)", "img/s": n / reserved.seconds})
    rows.append({"path": f"wbc-ray Ray Data decode ({cores} cores, Ray up, first run)",
                 "img/s": n / t.seconds})
    rows.append({"path": f"wbc-ray Ray Data decode ({cores} cores, first run incl. ray.init)",
                 "img/s": n / (t.seconds + t_init.seconds)})
    ray.shutdown()
    for r in rows:
        r["vs plain PIL"] = r["img/s"] / plain
        r["per core vs raw-decode limit"] = r["img/s"] / (len(files) / raw_s) / (
            cores if "cores" in r["path"] else 1)
    write_section("ingest", f"{len(files)} Kaggle 320x240 JPEGs -> 100x100 RGB uint8.\n\n"
                  + table(rows, ["path", "img/s", "vs plain PIL", "per core vs raw-decode limit"]),
                  f"python bench/ingest.py --n {args.n}")


if __name__ == "__main__":
    main()
