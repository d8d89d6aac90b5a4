"""Scoring: `wbc-ray score` end to end vs a plain one-process script vs this machine's limits.

    python bench/score.py [--n 8000] [--per-sample 100] [--memory 10000 50000]
                          [--runtime torch torch-compile onnx] [--only SECTION ...]

Input: ``--n`` Kaggle JPEGs laid out as ``<tmp>/<sample_id>/<cell>.jpeg`` symlinks
(``--per-sample`` cells per sample; archives larger than the 12,515 Kaggle images repeat
files under new names), read from the page cache by every contender in the same run; an
untrained paper-CNN checkpoint (speed does not depend on the weights). Model runtimes
(``--runtime``, default all, side by side): ``torch`` (eager ``Predictor``), ``torch-compile``
(``Predictor(compile=True)`` handed to ``score()``; no CLI flag), ``onnx`` (``--runtime onnx``).

Sections of docs/PERFORMANCE.md it writes (``--only`` picks some):
- ``inference-ablation`` (ablation): what each Predictor change bought, model only;
- ``inference-profile`` (profile): torch.profiler's top ops, before and after;
- ``scoring`` (throughput): limits, the plain script, ``wbc-ray score`` cold and warm;
- ``scoring-actor-layouts`` (layouts): the model actors laid out differently;
- ``scoring-memory`` (memory): peak memory of the whole Ray session at two archive sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from glob import glob
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import psutil
import ray
import torch
from common import KAGGLE, Timer, call_times, decoded, table, untrained_checkpoint, write_section
from PIL import Image

from wbc_ray.config import ScoreConfig
from wbc_ray.data.decode import decode_resize
from wbc_ray.models.checkpoint import load_checkpoint
from wbc_ray.models.paper_cnn import MaxPool2x2Stride1
from wbc_ray.models.predictor import CPU_CHUNK, Predictor
from wbc_ray.ray_session import init_ray
from wbc_ray.scoring.pipeline import score
from wbc_ray.scoring.plan import predictor_class

CORES = os.cpu_count() or 1
BATCH = 256  # the plain script's batch and ScoreConfig's default


# ---------------------------------------------------------------- inputs and predictors


def make_archive(root: Path, n: int, per_sample: int) -> list[str]:
    """``n`` symlinks ``root/s<k>/c<j>.jpeg`` to Kaggle JPEGs, cycling when n > 12,515."""
    pool = sorted(str(p) for p in (KAGGLE / "images").rglob("*.jpeg"))
    if not pool:
        raise SystemExit(f"no Kaggle images under {KAGGLE} (see ../shared/data/README.md)")
    paths = []
    for i in range(n):
        link = root / f"s{i // per_sample:05d}" / f"c{i % per_sample:04d}.jpeg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(pool[i % len(pool)])
        paths.append(str(link))
    for p in paths[:len(pool)]:  # warm the page cache so every contender reads from memory
        Path(p).read_bytes()
    return paths


def stock_pools(model: torch.nn.Module) -> torch.nn.Module:
    """The model as it was before the fast pool: every pool back to ``nn.MaxPool2d(2, 1)``."""
    for mod in model.modules():
        for name, child in mod.named_children():
            if isinstance(child, MaxPool2x2Stride1):
                setattr(mod, name, torch.nn.MaxPool2d(2, stride=1))
    return model


def pre_change(pred: Predictor, pool: bool = True, autocast: bool = True) -> Predictor:
    """``pred`` as before the inference changes: the stock max-pool (``pool``), fp32
    weights autocast to bf16 on every call (``autocast``)."""
    if pool:
        stock_pools(pred.model)
    if autocast:
        pred.model.float()
        pred.dtype = torch.float32  # predict() then autocasts to pred.precision (bf16)
    return pred


# The two classes below are handed to score() as the predictor class. Defined in the bench
# script, so Ray ships them to the actors by value.
class PreChangePredictor(Predictor):
    """The Predictor before the inference changes: :func:`pre_change`, the whole batch in
    one forward."""

    def __init__(self, checkpoint: str, **kwargs):
        super().__init__(checkpoint, **{**kwargs, "chunk": BATCH})
        pre_change(self)


class CompiledPredictor(Predictor):
    """``Predictor(compile=True)``, as a class that score() builds from the checkpoint."""

    def __init__(self, checkpoint: str, **kwargs):
        super().__init__(checkpoint, **{**kwargs, "compile": True})


# --runtime -> (row label, ScoreConfig.runtime, predictor class for score(): None = the
# runtime's own, see wbc_ray.scoring.plan.RUNTIMES)
RUNTIMES = {
    "torch": ("wbc-ray score", "torch", None),
    "torch-compile": ("wbc-ray score, torch.compile (CompiledPredictor)", "torch",
                      CompiledPredictor),
    "onnx": ("wbc-ray score --runtime onnx", "onnx", None),
}


def model_only(rt: str, checkpoint: str, threads: int):
    """The predictor a model actor of ``rt`` runs, built in this process for ``threads``
    threads (ONNX Runtime fixes them at build; torch's are set per call)."""
    _, runtime, cls = RUNTIMES[rt]
    kwargs = {"threads": threads} if runtime == "onnx" else {}
    return (cls or predictor_class(runtime))(checkpoint, **kwargs)


# ---------------------------------------------------------------- limits


def decode_core_s(files: list[str]) -> float:
    """Core-seconds per image of wbc-ray's decode (read + draft decode + resize), 1 process."""
    c0 = time.process_time()
    for f in files:
        decode_resize(Path(f).read_bytes(), 100)
    return (time.process_time() - c0) / len(files)


def predict_rate(predict, images: np.ndarray, threads: int) -> tuple[float, float]:
    """(images/s wall, core-seconds per image) of ``predict(images)`` with ``threads`` torch
    threads, best of 5 (core-seconds: the process's CPU time, robust to other load)."""
    torch.set_num_threads(threads)
    try:
        wall, cpu = call_times({"": lambda: predict(images)}, repeats=5, stat=min)[""]
    finally:
        torch.set_num_threads(CORES)
    return len(images) / wall, cpu / len(images)


def limits(files: list[str], checkpoint: str, runtimes: list[str]
           ) -> tuple[list[dict], dict[str, float]]:
    """Rows for the decode limit and each runtime's model and combined limits; returns
    (rows, combined img/s per runtime)."""
    decode_s = decode_core_s(files[:2000])
    images = decoded(files[:BATCH])
    rows = [{"path": "limit: decode only (read + draft decode + resize), per core",
             "img/s": 1 / decode_s}]
    combined = {}
    for rt in runtimes:
        pred = model_only(rt, checkpoint, 1)
        _, model_s1 = predict_rate(pred.predict, images, 1)
        pred = model_only(rt, checkpoint, CORES)
        model_rate, _ = predict_rate(pred.predict, images, CORES)
        combined[rt] = CORES / (decode_s + model_s1)
        name = type(pred).__name__
        how = (f"{getattr(pred, 'precision', 'fp32')}, "
               + (f"chunks of {pred.chunk}" if pred.chunk else "whole batch"))
        rows += [
            {"path": f"limit: model only, {name} ({how}) on a resident batch, per core",
             "runtime": rt, "img/s": 1 / model_s1},
            {"path": f"limit: model only, {name}, {CORES} threads", "runtime": rt,
             "img/s": model_rate},
            {"path": f"combined limit, {name}: {CORES} cores / (decode + model core-s per "
                     "image)", "runtime": rt, "img/s": combined[rt]}]
    return rows, combined


# ---------------------------------------------------------------- contenders


def plain_script(root: str, checkpoint: str, out: str, channels_last: bool = False,
                 stock_pool: bool = False) -> int:
    """What a user would write: glob, PIL decode + resize, eager fp32 model, one Parquet."""
    model, meta = load_checkpoint(checkpoint)
    if stock_pool:
        model = stock_pools(model)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    files = sorted(glob(f"{root}/*/*.jpeg"))
    probs = []
    for i in range(0, len(files), BATCH):
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((100, 100)))
                      for f in files[i:i + BATCH]])
        x = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            probs.append(model(x.contiguous(memory_format=fmt)).softmax(1).numpy())
    p = np.concatenate(probs)
    pd.DataFrame({"sample_id": [Path(f).parent.name for f in files],
                  "cell_id": [Path(f).name for f in files],
                  "label": np.asarray(meta.classes)[p.argmax(1)],
                  "confidence": p.max(1)}).to_parquet(out)
    return len(files)


class Sampler(threading.Thread):
    """Peak memory of this process and all its descendants (a local Ray session is all of
    them: GCS, raylet, workers, model actors, log monitor), and the cells published so far.

    psutil: RSS from ``memory_info()`` (cheap); PSS from ``memory_full_info()``, which reads
    ``smaps_rollup`` (~ms per big process), only with ``pss=True`` (the memory section) and
    then once a second, so that the sampler does not slow down what it measures.
    """

    def __init__(self, cells_dir: Path, per_sample: int, pss: bool = False):
        super().__init__(daemon=True)
        self.cells_dir, self.per_sample, self.pss = cells_dir, per_sample, pss
        self.period = 1.0 if pss else 0.25
        self.peak_rss = self.peak_pss = 0  # bytes
        self.procs = 0
        self.progress: list[tuple[float, int]] = []  # (time, cells published)
        self._halt = threading.Event()

    def run(self) -> None:
        self._sample()
        while not self._halt.wait(self.period):
            self._sample()
        self._sample()  # the state at the end

    def _sample(self) -> None:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        rss = pss = 0
        for p in procs:
            try:
                m = p.memory_full_info() if self.pss else p.memory_info()
            except psutil.Error:  # exited meanwhile
                continue
            rss, pss = rss + m.rss, pss + getattr(m, "pss", 0)
        self.procs = max(self.procs, len(procs))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        n = sum(1 for _ in self.cells_dir.glob("*/*.parquet"))
        self.progress.append((time.perf_counter(), n * self.per_sample))

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()

    def steady_rate(self, total: int, lo: float = 0.1, hi: float = 0.8) -> float:
        """Images/s between ``lo`` and ``hi`` of the cells published (start-up excluded).

        Results reach the driver about two batches behind the actors, and the last few
        batches together at the end, so the window stops short of the end (at 80%).
        """
        t_lo, n_lo = next((t, n) for t, n in self.progress if n >= lo * total)
        t_hi, n_hi = next((t, n) for t, n in self.progress if n >= hi * total)
        return (n_hi - n_lo) / (t_hi - t_lo) if t_hi > t_lo else float("nan")


@contextlib.contextmanager
def ray_session(tmp: Path):
    """A fresh local Ray session for the runs inside (the first :func:`wbc_score` starts
    it), shut down after. Its processes inherit an empty inductor cache, so that the
    torch.compile actors of the session's first run compile from nothing."""
    cache = tempfile.mkdtemp(prefix="inductor-", dir=tmp)
    with patch.dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache):
        try:
            yield
        finally:
            ray.shutdown()


def wbc_score(tmp: Path, root: Path, checkpoint: str, n: int, per_sample: int, *,
              actors: int | None = None, ray_cpus: int | None = None, runtime: str = "torch",
              predictor: type | None = None, pss: bool = False) -> dict:
    """`wbc-ray score` in process into a fresh output folder: init_ray() (if not up) +
    score(); timings and peak memory."""
    up = ray.is_initialized()
    out = tempfile.mkdtemp(prefix="out-", dir=tmp)
    cfg = ScoreConfig(checkpoint=checkpoint, input=str(root), output=out, batch_size=BATCH,
                      actors=actors, min_cells=1, runtime=runtime)
    with Sampler(Path(out) / "cells", per_sample, pss) as sampler:
        with Timer() as t_init:
            init_ray(num_cpus=ray_cpus, temp_dir=str(tmp / "ray"))
        with Timer() as t_score:
            summary = score(cfg, predictor, progress=False)
    if summary["counts"]["cells_written"] != n:
        raise RuntimeError(f"scored {summary['counts']} of {n} images")
    seconds = t_init.seconds + t_score.seconds
    return {"images": n, "ray start s": 0.0 if up else t_init.seconds, "seconds": seconds,
            "img/s": n / seconds, "steady img/s": sampler.steady_rate(n),
            "peak RSS MB": sampler.peak_rss / 2**20, "peak PSS MB": sampler.peak_pss / 2**20,
            "processes": sampler.procs}


# ---------------------------------------------------------------- model-only sections


# (label, Predictor kwargs, stock max-pool, pre-change CPU bf16 path: fp32 weights + autocast)
ABLATION = [
    (f"before: bf16 autocast, stock max-pool, batch {BATCH}", {"chunk": BATCH}, True, True),
    ("+ stride-1 max-pool as shifted maxima", {"chunk": BATCH}, False, True),
    (f"+ chunks of {CPU_CHUNK} images per forward", {"chunk": CPU_CHUNK}, False, True),
    ("+ weights cast to bf16 once, no autocast (the default now)", {"chunk": CPU_CHUNK},
     False, False),
    (f"fp32, stock max-pool, batch {BATCH}", {"precision": "fp32", "chunk": BATCH}, True, False),
    (f"fp32, fast max-pool, chunks of {CPU_CHUNK}", {"precision": "fp32", "chunk": CPU_CHUNK},
     False, False),
    ("bf16 + torch.compile, cold inductor cache", {"chunk": CPU_CHUNK, "compile": True},
     False, False),
]


def ablation_row(make, images: np.ndarray) -> dict:
    """The first call of ``make()`` on one chunk (torch.compile's warm-up), its rate with
    all threads, and the per-core rate of a second one first called with 1 thread (compiled
    kernels keep the thread count they were compiled for)."""
    pred = make()
    with Timer() as first:
        pred.predict(images[:pred.chunk])
    rate, _ = predict_rate(pred.predict, images, CORES)
    _, core_s = predict_rate(make().predict, images, 1)
    return {f"img/s ({CORES} threads)": rate, "img/s per core": 1 / core_s,
            "first call s": first.seconds}


def ablation(a, tmp: Path, checkpoint: str) -> None:
    """Model-only rate of each Predictor change, cumulative, on one resident batch."""
    images = decoded(make_archive(tmp / "ablation", BATCH, BATCH))
    def maker(kwargs: dict, pool: bool, autocast: bool):
        return lambda: pre_change(Predictor(checkpoint, **kwargs), pool, autocast)

    rows = [{"Predictor": label, **ablation_row(maker(*spec), images)}
            for label, *spec in ABLATION]
    np.save(tmp / "images.npy", images)
    rows.append({"Predictor": "bf16 + torch.compile, new process, inductor cache on disk",
                 **compile_in_new_process(checkpoint, tmp / "images.npy")})
    for r in rows:
        r["vs before"] = r[f"img/s ({CORES} threads)"] / rows[0][f"img/s ({CORES} threads)"]
    body = (f"Paper CNN, one resident batch of {BATCH} decoded Kaggle images through "
            "`Predictor.predict` (normalise + forward + softmax), channels-last, best of 5. "
            "Rows 2-4 each add one change to the row above. `img/s per core`: images per "
            "CPU-second of the process with 1 torch thread. `first call s`: the first "
            "`predict` on one chunk, i.e. torch.compile's warm-up that every actor pays: "
            "cold (empty inductor cache) or in a new process that finds the cache on disk, "
            "as the actors of a later run on the same machine would.\n\n"
            + table(rows, ["Predictor", f"img/s ({CORES} threads)", "img/s per core",
                           "vs before", "first call s"])
            + "\n\nOne stride-1 2x2 max-pool on its own (chunk of "
            f"{CPU_CHUNK} images, channels-last, 1 thread, best of 20 CPU times):\n\n"
            + table(pool_rows(), ["input (N, C, H, W)", "dtype", "nn.MaxPool2d ms",
                                  "shifted maxima ms", "speed-up"]))
    write_section("inference-ablation", body, _command(a, "ablation"))


def compile_in_new_process(checkpoint: str, images: Path) -> dict:
    """torch.compile as an actor of a later run meets it: a new process, cache on disk."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import score; "
            f"score.compile_probe({checkpoint!r}, {str(images)!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_probe(checkpoint: str, images_npy: str) -> None:
    print(json.dumps(ablation_row(lambda: Predictor(checkpoint, chunk=CPU_CHUNK, compile=True),
                                  np.load(images_npy))))


def pool_rows() -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with torch.inference_mode():
        for shape in ((CPU_CHUNK, 32, 98, 98), (CPU_CHUNK, 64, 48, 48), (CPU_CHUNK, 64, 45, 45)):
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
                got = call_times({"stock": lambda x=x: torch.nn.functional.max_pool2d(x, 2, 1),
                                  "fast": lambda x=x: MaxPool2x2Stride1()(x)}, 20, stat=min)
                stock, fast = got["stock"][1] * 1e3, got["fast"][1] * 1e3  # CPU ms
                rows.append({"input (N, C, H, W)": str(shape), "dtype": str(dtype)[6:],
                             "nn.MaxPool2d ms": stock, "shifted maxima ms": fast,
                             "speed-up": stock / fast})
    torch.set_num_threads(CORES)
    return rows


def profile(a, tmp: Path, checkpoint: str) -> None:
    """Where ``predict`` spends its time, before and after the changes (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    images = decoded(make_archive(tmp / "profile", BATCH, BATCH))
    rows = []
    for label, pred in (("before", PreChangePredictor(checkpoint)), ("now", Predictor(checkpoint))):
        pred.predict(images)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                pred.predict(images)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]:
            rows.append({"Predictor": label, "op": f"`{e.key}`", "calls": e.count // 3,
                         "self CPU %": 100 * e.self_cpu_time_total / total})
    body = (f"torch.profiler over 3 x `Predictor.predict` on a resident batch of {BATCH} "
            f"images, {CORES} threads, the 6 ops with the most self CPU time. `before`: the "
            "pre-change Predictor (stock max-pools, whole batch, bf16 autocast); `now`: the "
            "default Predictor.\n\n"
            + table(rows, ["Predictor", "op", "calls", "self CPU %"]))
    write_section("inference-profile", body, _command(a, "profile"))


# ---------------------------------------------------------------- end-to-end sections


# (label, plain_script keyword arguments); the first is the base of `vs plain script`
PLAIN_SCRIPTS = [
    (f"plain one-process script: PIL + eager fp32 NCHW + Parquet ({CORES} threads)", {}),
    ("plain script, fp32 channels-last", {"channels_last": True}),
    ("plain script, model with the stock nn.MaxPool2d (before)", {"stock_pool": True}),
]


def throughput(a, tmp: Path, checkpoint: str) -> None:
    """Limits, the plain script and `wbc-ray score` (cold, then Ray up) per runtime."""
    root = tmp / "archive"
    files = make_archive(root, a.n, a.per_sample)
    rows = []
    if "onnx" in a.runtime:
        from wbc_ray.models.onnx_predictor import cached_export

        with Timer() as t:
            cached_export(checkpoint, cache=tempfile.mkdtemp(dir=tmp))  # timed: a fresh cache
        cached_export(checkpoint)  # the file the actors (and the limit below) load
        rows.append({"path": "ONNX export of the checkpoint (once per checkpoint: the actors "
                             "load the cached file)", "seconds": t.seconds})
    limit_rows, combined = limits(files, checkpoint, a.runtime)
    rows += limit_rows
    for label, kw in PLAIN_SCRIPTS:
        with Timer() as t:
            plain_script(str(root), checkpoint, str(tmp / "plain.parquet"), **kw)
        rows.append({"path": label, "seconds": t.seconds, "img/s": a.n / t.seconds})
    plain = rows[-len(PLAIN_SCRIPTS)]["img/s"]  # the first: what a user would write
    for rt in a.runtime:
        label, runtime, predictor = RUNTIMES[rt]
        with ray_session(tmp):
            for when in ("incl. Ray start", "Ray already up"):
                r = wbc_score(tmp, root, checkpoint, a.n, a.per_sample, actors=a.actors,
                              ray_cpus=a.ray_cpus, runtime=runtime, predictor=predictor)
                rows += [{"path": f"{label}, {when}", "runtime": rt, **r},
                         {"path": f"{label}, {when}: steady state (10-80% published)",
                          "runtime": rt, "img/s": r["steady img/s"]}]
    for r in rows:
        if "img/s" in r:  # rows of no runtime (decode, plain script): the first runtime's limit
            r["vs plain script"] = r["img/s"] / plain
            r["vs combined limit"] = r["img/s"] / combined[r.get("runtime", a.runtime[0])]
    body = (f"{a.n:,} Kaggle 320x240 JPEGs in {a.n // a.per_sample} samples x {a.per_sample} "
            f"cells (symlinks), untrained paper CNN checkpoint, batch {BATCH}, page cache "
            f"warm. {_layout_note(a)} Runtimes: {', '.join(a.runtime)}, each in its own Ray "
            "session, run twice (cold, then Ray up); torch.compile's actors start the cold "
            "run with an empty inductor cache and the second with the cache the first left "
            "on disk. `vs combined limit`: against the combined limit of the row's runtime "
            f"(rows of none: {a.runtime[0]}'s). `peak RSS MB`: summed over the Ray session's "
            "processes (see the memory section).\n\n"
            + table(rows, ["path", "seconds", "ray start s", "img/s", "vs plain script",
                           "vs combined limit", "peak RSS MB"]))
    write_section("scoring", body, _command(a, "throughput", "n", "per_sample", "actors",
                                            "ray_cpus", "runtime"))


# (label, ScoreConfig.actors, logical CPUs for Ray, predictor class handed to score())
LAYOUTS = [
    ("1 actor x 1 CPU, Predictor before the changes (Ray given 1 CPU: the old default)",
     None, 1, PreChangePredictor),
    ("1 actor x 1 CPU, 1 torch thread (Ray given 1 CPU: the old default)", None, 1, Predictor),
    ("1 actor x 2 CPUs, 2 torch threads (--actors 1)", 1, None, Predictor),
    ("default: 2 actors x 1 CPU, 1 torch thread each", None, None, Predictor),
]


def layouts(a, tmp: Path, checkpoint: str) -> None:
    """The same scoring run with the model actors laid out differently on this machine."""
    root = tmp / "layouts"
    files = make_archive(root, a.n, a.per_sample)
    _, combined = limits(files, checkpoint, ["torch"])
    rows = []
    for label, actors, ray_cpus, predictor in LAYOUTS:
        with ray_session(tmp):
            cold, warm = (wbc_score(tmp, root, checkpoint, a.n, a.per_sample, actors=actors,
                                    ray_cpus=ray_cpus, predictor=predictor) for _ in range(2))
        rows.append({"actor layout": label, "s incl. Ray start": cold["seconds"],
                     "img/s incl. Ray start": cold["img/s"], "s, Ray up": warm["seconds"],
                     "steady img/s (Ray up)": warm["steady img/s"],
                     "steady vs combined limit": warm["steady img/s"] / combined["torch"],
                     "peak RSS MB": max(cold["peak RSS MB"], warm["peak RSS MB"])})
    body = (f"{a.n:,} Kaggle JPEGs ({a.n // a.per_sample} samples), as in `scoring`; each "
            f"layout in a fresh Ray session, run twice (cold, then Ray up). Combined limit "
            f"{combined['torch']:,.0f} img/s. The first row hands the pre-change Predictor "
            "(`PreChangePredictor`) to `score()` as the predictor class. On a CPU-only "
            "cluster Ray Data fuses the decode stage into the model actors (same resources), "
            "so each actor decodes and predicts its batches in turn.\n\n"
            + table(rows, ["actor layout", "s incl. Ray start", "img/s incl. Ray start",
                           "s, Ray up", "steady img/s (Ray up)", "steady vs combined limit",
                           "peak RSS MB"]))
    write_section("scoring-actor-layouts", body, _command(a, "layouts", "n", "per_sample"))


def memory(a, tmp: Path, checkpoint: str) -> None:
    """Peak memory of the whole Ray session per runtime and archive size."""
    roots = {n: tmp / f"mem-{n}" for n in a.memory}
    for n, root in roots.items():
        make_archive(root, n, a.per_sample)
    rows = []
    for rt in a.runtime:
        _, runtime, predictor = RUNTIMES[rt]
        first = len(rows)
        for n, root in roots.items():
            with ray_session(tmp):  # a fresh session per size: the peaks compare like with like
                r = wbc_score(tmp, root, checkpoint, n, a.per_sample, actors=a.actors,
                              ray_cpus=a.ray_cpus, runtime=runtime, predictor=predictor,
                              pss=True)
            rows.append({**r, "runtime": rt, "images": f"{n:,}", "samples": n // a.per_sample})
            for kind in ("RSS", "PSS"):
                rows[-1][f"{kind} vs smallest"] = (rows[-1][f"peak {kind} MB"]
                                                   / rows[first][f"peak {kind} MB"])
    body = ("Peak memory of the whole local Ray session: the driver process and all its "
            "descendants (GCS, raylet, workers, model actors, log monitor), sampled once a "
            "second with psutil. RSS (`memory_info().rss`) counts shared pages (shared "
            "libraries, the object store) once per process that maps them; PSS "
            "(`memory_full_info().pss`, from `smaps_rollup`) divides them among those "
            "processes, so the PSS sum is the session's footprint. Each runtime and size runs "
            "in a fresh Ray session, Ray start included; the PSS sampling costs the driver "
            f"CPU, so take throughput from the `scoring` section. {_layout_note(a)}\n\n"
            + table(rows, ["runtime", "images", "samples", "seconds", "peak RSS MB",
                           "RSS vs smallest", "peak PSS MB", "PSS vs smallest", "processes"]))
    write_section("scoring-memory", body, _command(a, "memory", "per_sample", "memory",
                                                   "actors", "ray_cpus", "runtime"))


def _layout_note(a) -> str:
    return (f"ScoreConfig.actors={a.actors}, Ray CPUs={a.ray_cpus or CORES}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.")


def _command(a, section: str, *names: str) -> str:
    """The command that reruns ``section`` with the named options as they were set."""
    words = [f"python bench/score.py --only {section}"]
    for name in names:
        value = getattr(a, name)
        if value is not None and not (name == "runtime" and value == list(RUNTIMES)):
            words += ["--" + name.replace("_", "-"), *map(str, np.atleast_1d(value))]
    return " ".join(words)


SECTIONS = {"ablation": ablation, "profile": profile, "throughput": throughput,
            "layouts": layouts, "memory": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8000, help="images for throughput and layouts")
    ap.add_argument("--per-sample", type=int, default=100)
    ap.add_argument("--memory", type=int, nargs="+", default=[10_000, 50_000],
                    help="archive sizes for the memory section")
    ap.add_argument("--actors", type=int, default=None, help="ScoreConfig.actors")
    ap.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs given to Ray")
    ap.add_argument("--runtime", choices=list(RUNTIMES), nargs="+", default=list(RUNTIMES),
                    metavar="NAME", help="model runtimes for throughput and memory: "
                    f"{', '.join(RUNTIMES)} (default: all)")
    ap.add_argument("--only", choices=list(SECTIONS), action="append",
                    help="run only these sections (repeatable); default: all")
    a = ap.parse_args()
    a.runtime = [rt for rt in RUNTIMES if rt in a.runtime]  # torch first
    if os.environ.get("RAY_ADDRESS"):  # init_ray() would join that cluster
        raise SystemExit("bench/score.py measures a local Ray session: unset RAY_ADDRESS")
    with tempfile.TemporaryDirectory(prefix="wbc-bench-score-") as d:
        tmp = Path(d)
        # The driver's torch.compile (ablation, limits) never reads or fills the user's
        # inductor cache: the ablation's first compile is cold.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
        checkpoint = untrained_checkpoint(str(tmp / "checkpoint"))
        for name, section in SECTIONS.items():
            if name in (a.only or SECTIONS):
                section(a, tmp, checkpoint)


if __name__ == "__main__":
    main()
