"""Shared bench helpers: the machine, inputs, call timing, a results table, and
docs/PERFORMANCE.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAGGLE = Path(os.environ.get("WBC_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "kaggle-blood-cells"
# where write_section writes; WBC_BENCH_PERF=<file> for a trial run that leaves the docs alone
PERF = Path(os.environ.get("WBC_BENCH_PERF", REPO / "docs" / "PERFORMANCE.md"))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}"


def kaggle_files(n: int) -> list[str]:
    files = sorted(str(p) for p in (KAGGLE / "images" / "TRAIN").rglob("*.jpeg"))
    if not files:
        sys.exit(f"no Kaggle images under {KAGGLE} (see ../shared/data/README.md)")
    step = max(1, len(files) // n)
    return files[::step][:n]


def decoded(files: list[str]):
    """``files`` decoded and resized to 100x100 as scoring does: uint8 (N, 100, 100, 3)."""
    import numpy as np

    from wbc_ray.data.decode import decode_resize

    return np.stack([decode_resize(Path(f).read_bytes(), 100) for f in files])


def untrained_checkpoint(directory: str) -> str:
    """An untrained paper-CNN checkpoint (seed 0) in ``directory``; speed does not depend on
    the weights."""
    import torch

    from wbc_ray.classes import PAPER_CLASSES
    from wbc_ray.models import build_model
    from wbc_ray.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(directory, build_model("paper_cnn", len(PAPER_CLASSES)),
                           CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES))


def call_times(calls: dict[str, Callable[[], object]], repeats: int,
               stat: Callable = statistics.median, warmup: int = 2
               ) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s of this process) of each call: ``stat`` over ``repeats`` timed calls,
    after ``warmup`` untimed ones (caches, compilation). The calls take turns, so that load
    from other processes falls on all of them alike; CPU time is robust to that load."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {name: (stat([w for w, _ in t]), stat([c for _, c in t])) for name, t in times.items()}


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def add_ratios(rows: list[dict], **bases: float) -> None:
    """``add_ratios(rows, **{"vs plain": 120.0})`` adds ``img/s / base`` columns in place."""
    for r in rows:
        for column, base in bases.items():
            r[column] = r["img/s"] / base


def write_section(name: str, body: str, command: str) -> None:
    """Replace (or append) the ``<!-- bench:name -->`` section of docs/PERFORMANCE.md."""
    stamp = time.strftime("%Y-%m-%d")
    section = (f"<!-- bench:{name} -->\n### {name}\n\nCommand: `{command}`  \n"
               f"Machine: {machine()}  \nDate: {stamp}\n\n{body}\n<!-- /bench:{name} -->")
    text = PERF.read_text() if PERF.exists() else "# Performance\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + section + "\n"
    PERF.parent.mkdir(exist_ok=True)
    PERF.write_text(text)
    print(body)
