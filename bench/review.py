"""Review station response times and memory on a large synthetic run.

Synthesises a scoring output (default 50,000 cells in 500 samples, 64 small PNGs shared by
the cells), starts ``wbc-ray review`` as its own process on 127.0.0.1 and requests worklist
pages and sample views (each sample once cold, then again warm) plus thumbnails, timing each
request from the client. Reports p50/p95 and the server's RSS (psutil) after start and at the
end, and prints a markdown table for docs/REVIEW.md.

    .venv/bin/python bench/review.py                      # 50,000 cells / 500 samples
    .venv/bin/python bench/review.py --samples 50 --cells 100 --requests 50   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthesise(root: str, samples: int, cells: int) -> float:
    from wbc_ray.classes import PAPER_CLASSES
    from wbc_ray.config import ScoreConfig
    from wbc_ray.review import synthetic

    t0 = time.perf_counter()
    images = synthetic.write_images(os.path.join(root, "images"), 64)
    synthetic.write_output(os.path.join(root, "out"), images, samples=samples,
                           cells_per_sample=cells, classes=PAPER_CLASSES,
                           ranges=ScoreConfig().reference_ranges)
    return time.perf_counter() - t0


def start(scored: str, port: int) -> tuple[subprocess.Popen, float]:
    # The app as `wbc-ray review` serves it, without the CLI module's own imports (torch).
    code = ("import sys; from wbc_ray.review.run import serve; "
            "serve(sys.argv[1], port=int(sys.argv[2]))")
    cmd = [sys.executable, "-c", code, scored, str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/review.css", timeout=1)
            return proc, time.perf_counter() - t0
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.2)


def timed(client: httpx.Client, url: str, params: dict) -> float:
    t0 = time.perf_counter()
    r = client.get(url, params=params)
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def pct(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def browse(port: int, samples: int, cells: int, requests: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sorts = ["flagged", "sample", "cells", "review", "status"]
    pages = max(1, -(-samples // 50))
    ids = [f"S{i:05d}" for i in rng.permutation(samples)[:requests]]
    out: dict[str, list[float]] = {"worklist": [], "sample (cold)": [], "sample (warm)": [],
                                   "thumbnail (cold)": [], "thumbnail (warm)": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for i in range(requests):
            out["worklist"].append(timed(c, "/", {"sort": sorts[i % len(sorts)],
                                                  "page_no": 1 + i % pages}))
        for sid in ids:
            out["sample (cold)"].append(timed(c, "/sample", {"s": sid}))
        for sid in ids:
            out["sample (warm)"].append(timed(c, "/sample", {"s": sid}))
        for sid in ids[:requests]:
            cid = f"c{int(rng.integers(cells)):04d}"
            out["thumbnail (cold)"].append(timed(c, "/thumb", {"s": sid, "c": cid}))
            out["thumbnail (warm)"].append(timed(c, "/thumb", {"s": sid, "c": cid}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--cells", type=int, default=100, help="cells per sample")
    ap.add_argument("--requests", type=int, default=200, help="requests per kind")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = synthesise(tmp, args.samples, args.cells)
        port = free_port()
        proc, started = start(os.path.join(tmp, "out"), port)
        try:
            server = psutil.Process(proc.pid)
            rss_start = server.memory_info().rss
            times = browse(port, args.samples, args.cells, min(args.requests, args.samples))
            rss_end = server.memory_info().rss
        finally:
            proc.terminate()
            proc.wait(10)
    result = {"cells": args.samples * args.cells, "samples": args.samples,
              "synthesis_s": round(made, 1), "startup_s": round(started, 1),
              "rss_after_start_mib": round(rss_start / 2**20), "rss_end_mib":
              round(rss_end / 2**20),
              "latency_ms": {k: [round(v, 1) for v in pct(ms)] + [len(ms)]
                             for k, ms in times.items()}}
    print(json.dumps(result, indent=2))
    print(f"\n{args.samples * args.cells:,} cells / {args.samples} samples; {machine()}\n")
    print("| request | p50 ms | p95 ms | n |\n|---|---:|---:|---:|")
    for k, (p50, p95, n) in result["latency_ms"].items():
        print(f"| {k} | {p50:.1f} | {p95:.1f} | {n} |")
    print(f"\nserver RSS: {result['rss_after_start_mib']} MiB after start, "
          f"{result['rss_end_mib']} MiB after browsing; start-up {started:.1f} s")


if __name__ == "__main__":
    main()
