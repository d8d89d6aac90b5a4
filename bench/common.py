"""Shared bench helpers: the machine, a results table, and docs/PERFORMANCE.md sections."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAGGLE = Path(os.environ.get("WBC_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "kaggle-blood-cells"
PERF = REPO / "docs" / "PERFORMANCE.md"


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
