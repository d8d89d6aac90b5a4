"""Scoring: `wbc-ray score` end to end vs a plain one-process script vs this machine's limits.

    python bench/score.py [--n 8000] [--per-sample 100] [--memory 10000 50000] [--only ...]

Input: ``--n`` Kaggle JPEGs laid out as ``<tmp>/<sample_id>/<cell>.jpeg`` symlinks
(``--per-sample`` cells per sample; archives larger than the 12,515 Kaggle images repeat
files under new names). The checkpoint is an untrained paper CNN: speed does not depend on
the weights. Every contender reads the same files from the page cache in the same run.

Sections of docs/PERFORMANCE.md it writes (``--only`` picks some):
- ``inference-ablation`` (ablation): what each Predictor change bought, model only;
- ``inference-profile`` (profile): torch.profiler's top ops, before and after;
- ``scoring`` (throughput): limits, the plain script, ``wbc-ray score`` cold and warm;
- ``scoring-actor-layouts`` (layouts): the same run with the model actors laid out
  differently;
- ``scoring-memory`` (memory): peak memory of the whole Ray session at two archive sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from glob import glob
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import KAGGLE, Timer, add_ratios, table, write_section
from PIL import Image

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.config import ScoreConfig
from wbc_ray.data.decode import decode_resize
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from wbc_ray.models.paper_cnn import MaxPool2x2Stride1
from wbc_ray.models.predictor import CPU_CHUNK, Predictor

CORES = os.cpu_count() or 1
BATCH = 256  # the plain script's batch and ScoreConfig's default


# ---------------------------------------------------------------- inputs


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


def untrained_checkpoint(directory: str) -> str:
    torch.manual_seed(0)
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES)
    return save_checkpoint(directory, build_model("paper_cnn", len(PAPER_CLASSES)), meta)


def stock_pools(model: torch.nn.Module) -> torch.nn.Module:
    """The model as it was before the fast pool: every pool back to ``nn.MaxPool2d(2, 1)``."""
    for mod in model.modules():
        for name, child in mod.named_children():
            if isinstance(child, MaxPool2x2Stride1):
                setattr(mod, name, torch.nn.MaxPool2d(2, stride=1))
    return model


class PreChangePredictor(Predictor):
    """The Predictor as it was before the inference changes: stock max-pools, the whole
    batch in one forward, fp32 weights under bf16 autocast. Defined in the bench script, so
    Ray ships it to the actors by value."""

    def __init__(self, checkpoint: str, **kwargs):
        super().__init__(checkpoint, **{**kwargs, "chunk": BATCH})
        stock_pools(self.model).float()
        self.dtype = torch.float32  # predict() then autocasts to self.precision (bf16)


# ---------------------------------------------------------------- limits


def decode_core_s(files: list[str]) -> float:
    """Core-seconds per image of wbc-ray's decode (read + draft decode + resize), 1 process."""
    c0 = time.process_time()
    for f in files:
        decode_resize(Path(f).read_bytes(), 100)
    return (time.process_time() - c0) / len(files)


def predictor_rate(predictor: Predictor, images: np.ndarray, threads: int, reps: int = 5
                   ) -> tuple[float, float]:
    """(images/s wall, core-seconds per image) of ``predict`` on a resident batch; best of
    ``reps``. Core-seconds are the process's CPU time, robust to other load."""
    torch.set_num_threads(threads)
    try:
        predictor.predict(images)  # warm-up (oneDNN primitive caches, compile)
        best_wall, best_cpu = float("inf"), float("inf")
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            predictor.predict(images)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    finally:
        torch.set_num_threads(CORES)
    return len(images) / best_wall, best_cpu / len(images)


def resident_batch(files: list[str]) -> np.ndarray:
    return np.stack([decode_resize(Path(f).read_bytes(), 100) for f in files[:BATCH]])


def limits(files: list[str], checkpoint: str) -> tuple[list[dict], float]:
    """Rows for the decode, model and combined limits; returns (rows, combined img/s)."""
    decode_s = decode_core_s(files[:2000])
    images = resident_batch(files)
    pred = Predictor(checkpoint)
    model_rate, _ = predictor_rate(pred, images, CORES)
    _, model_s1 = predictor_rate(pred, images, 1)
    combined = CORES / (decode_s + model_s1)
    return [
        {"path": "limit: decode only (read + draft decode + resize), per core",
         "img/s": 1 / decode_s},
        {"path": f"limit: model only, Predictor ({pred.precision}, chunks of {pred.chunk}) "
                 "on a resident batch, per core", "img/s": 1 / model_s1},
        {"path": f"limit: model only, Predictor, {CORES} threads", "img/s": model_rate},
        {"path": f"combined limit: {CORES} cores / (decode + model core-s per image)",
         "img/s": combined},
    ], combined


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
    them: GCS, raylet, workers, dashboard, log monitor), and the cells published so far.

    RSS comes from ``/proc/<pid>/statm`` (cheap). PSS needs ``smaps_rollup``, which costs
    ~4 ms per big process: sampled only with ``pss=True`` (the memory section), and then
    once a second, so that the sampler does not slow down what it measures.
    """

    def __init__(self, cells_dir: Path | None = None, per_sample: int = 1, pss: bool = False):
        super().__init__(daemon=True)
        self.cells_dir, self.per_sample, self.pss = cells_dir, per_sample, pss
        self.period = 1.0 if pss else 0.25
        self.peak_rss = self.peak_pss = 0  # kB
        self.procs = 0
        self.progress: list[tuple[float, int]] = []  # (time, cells published)
        self._halt = threading.Event()

    def run(self) -> None:
        self._sample()
        while not self._halt.wait(self.period):
            self._sample()
        self._sample()  # the state at the end

    def _sample(self) -> None:
        pids = _process_tree(os.getpid())
        self.procs = max(self.procs, len(pids))
        self.peak_rss = max(self.peak_rss, sum(map(_rss_kb, pids)))
        if self.pss:
            self.peak_pss = max(self.peak_pss, sum(map(_pss_kb, pids)))
        if self.cells_dir is not None:
            n = sum(1 for _ in self.cells_dir.glob("*/*.parquet"))
            self.progress.append((time.perf_counter(), n * self.per_sample))

    def stop(self) -> None:
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


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(d))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += children.get(pid, [])
    return out


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except OSError:  # exited meanwhile
        return 0


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("Pss:")), 0)


def wbc_score(root: str, checkpoint: str, out: str, n: int, per_sample: int,
              actors: int | None, ray_cpus: int | None, pss: bool = False) -> dict:
    """`wbc-ray score` in process: init_ray() (if not up) + score(); timings and peak memory."""
    import ray

    from wbc_ray.ray_session import init_ray
    from wbc_ray.scoring.pipeline import score

    up = ray.is_initialized()
    sampler = Sampler(Path(out) / "cells", per_sample, pss)
    sampler.start()
    try:
        with Timer() as t_init:
            init_ray(num_cpus=ray_cpus)
        cfg = ScoreConfig(checkpoint=checkpoint, input=root, output=out, batch_size=BATCH,
                          actors=actors, min_cells=1)
        with Timer() as t_score:
            summary = score(cfg, progress=False)
    finally:
        sampler.stop()
    if summary["counts"]["cells_written"] != n:
        raise RuntimeError(f"scored {summary['counts']} of {n} images")
    return {"images": n, "ray start s": 0.0 if up else t_init.seconds,
            "seconds": t_init.seconds + t_score.seconds,
            "img/s": n / (t_init.seconds + t_score.seconds),
            "steady img/s": sampler.steady_rate(n),
            "peak RSS MB": sampler.peak_rss / 1024, "peak PSS MB": sampler.peak_pss / 1024,
            "processes": sampler.procs}


# ---------------------------------------------------------------- sections


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


def ablation(a, tmp: Path, checkpoint: str) -> None:
    """Model-only rate of each Predictor change, cumulative, on one resident batch."""
    images = resident_batch(make_archive(tmp / "ablation", BATCH, BATCH))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # the first compile is cold
    rows = []
    for label, kwargs, old_pool, old_autocast in ABLATION:
        pred = Predictor(checkpoint, **kwargs)
        if old_pool:
            stock_pools(pred.model)
        if old_autocast:
            pred.model.float()
            pred.dtype = torch.float32  # predict() then autocasts to pred.precision (bf16)
        with Timer() as first:
            pred.predict(images[:pred.chunk])
        rate, core_s = predictor_rate(pred, images, CORES)
        rows.append({"Predictor": label, f"img/s ({CORES} threads)": rate,
                     "img/s per core": 1 / core_s, "first call s": first.seconds})
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
    write_section("inference-ablation", body, "python bench/score.py --only ablation")


def profile(a, tmp: Path, checkpoint: str) -> None:
    """Where ``predict`` spends its time, before and after the changes (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    images = resident_batch(make_archive(tmp / "profile", BATCH, BATCH))
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
    write_section("inference-profile", body, "python bench/score.py --only profile")


def compile_in_new_process(checkpoint: str, images: Path) -> dict:
    """torch.compile as an actor of a later run meets it: a new process, cache on disk."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import score; "
            f"score.compile_probe({checkpoint!r}, {str(images)!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_probe(checkpoint: str, images_npy: str) -> None:
    images = np.load(images_npy)
    pred = Predictor(checkpoint, chunk=CPU_CHUNK, compile=True)
    with Timer() as first:
        pred.predict(images[:pred.chunk])
    rate, core_s = predictor_rate(pred, images, CORES)
    print(json.dumps({f"img/s ({CORES} threads)": rate, "img/s per core": 1 / core_s,
                      "first call s": first.seconds}))


def pool_rows() -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with torch.inference_mode():
        for shape in ((CPU_CHUNK, 32, 98, 98), (CPU_CHUNK, 64, 48, 48), (CPU_CHUNK, 64, 45, 45)):
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
                stock = _cpu_ms(lambda x=x: torch.nn.functional.max_pool2d(x, 2, 1))
                fast = _cpu_ms(lambda x=x: MaxPool2x2Stride1()(x))
                rows.append({"input (N, C, H, W)": str(shape), "dtype": str(dtype)[6:],
                             "nn.MaxPool2d ms": stock, "shifted maxima ms": fast,
                             "speed-up": stock / fast})
    torch.set_num_threads(CORES)
    return rows


def _cpu_ms(fn, reps: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best * 1e3


def throughput(a, tmp: Path, checkpoint: str) -> None:
    import ray

    files = make_archive(tmp / "archive", a.n, a.per_sample)
    root = str(tmp / "archive")
    rows, combined = limits(files, checkpoint)
    with Timer() as t:
        plain_script(root, checkpoint, str(tmp / "plain.parquet"))
    plain = a.n / t.seconds
    rows.append({"path": f"plain one-process script: PIL + eager fp32 NCHW + Parquet "
                         f"({CORES} threads)", "seconds": t.seconds, "img/s": plain})
    for label, kw in (("plain script, fp32 channels-last", {"channels_last": True}),
                      ("plain script, model with the stock nn.MaxPool2d (before)",
                       {"stock_pool": True})):
        with Timer() as t:
            plain_script(root, checkpoint, str(tmp / "plain-other.parquet"), **kw)
        rows.append({"path": label, "seconds": t.seconds, "img/s": a.n / t.seconds})
    for label in ("incl. Ray start", "Ray already up"):
        r = wbc_score(root, checkpoint, str(tmp / f"out-{len(rows)}"), a.n, a.per_sample,
                      a.actors, a.ray_cpus)
        rows.append({"path": f"wbc-ray score, {label}", **r})
        rows.append({"path": f"wbc-ray score, {label}: steady state (10-80% published)",
                     "img/s": r["steady img/s"]})
    ray.shutdown()
    add_ratios(rows, **{"vs plain script": plain, "vs combined limit": combined})
    body = (f"{a.n:,} Kaggle 320x240 JPEGs in {a.n // a.per_sample} samples x {a.per_sample} "
            f"cells (symlinks), untrained paper CNN checkpoint, batch {BATCH}, page cache "
            f"warm. {_layout_note(a)} `peak RSS MB`: summed over the Ray session's "
            "processes (see the memory section).\n\n"
            + table(rows, ["path", "seconds", "ray start s", "img/s", "vs plain script",
                           "vs combined limit", "peak RSS MB"]))
    write_section("scoring", body, _command(a))


# (label, extra environment for the Ray workers, ScoreConfig.actors, logical CPUs for Ray,
#  Predictor class the pipeline uses)
LAYOUTS = [
    ("1 actor x 1 CPU, Predictor before the changes (Ray given 1 CPU: the old default)",
     {}, None, 1, PreChangePredictor),
    ("1 actor x 1 CPU, 1 torch thread (Ray given 1 CPU: the old default)", {}, None, 1,
     Predictor),
    ("1 actor x 2 CPUs, 2 torch threads (--actors 1)", {}, 1, None, Predictor),
    ("default: 2 actors x 1 CPU, 1 torch thread each", {}, None, None, Predictor),
]


def layouts(a, tmp: Path, checkpoint: str) -> None:
    """The same scoring run with the model actors laid out differently on this machine."""
    import ray

    from wbc_ray.scoring import pipeline

    if getattr(pipeline, "Predictor", None) is not Predictor:
        raise SystemExit("wbc_ray.scoring.pipeline no longer uses inference.Predictor by "
                         "that name: update the Predictor swap in bench/score.py layouts()")
    files = make_archive(tmp / "layouts", a.n, a.per_sample)
    _, combined = limits(files, checkpoint)
    rows = []
    for label, env, actors, ray_cpus, predictor in LAYOUTS:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the raylet and its workers inherit the driver's environment
        pipeline.Predictor = predictor
        try:
            cold = wbc_score(str(tmp / "layouts"), checkpoint, str(tmp / f"lay-{len(rows)}a"),
                             a.n, a.per_sample, actors, ray_cpus)
            warm = wbc_score(str(tmp / "layouts"), checkpoint, str(tmp / f"lay-{len(rows)}b"),
                             a.n, a.per_sample, actors, ray_cpus)
        finally:
            ray.shutdown()
            pipeline.Predictor = Predictor
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
        rows.append({"actor layout": label, "s incl. Ray start": cold["seconds"],
                     "img/s incl. Ray start": cold["img/s"], "s, Ray up": warm["seconds"],
                     "steady img/s (Ray up)": warm["steady img/s"],
                     "steady vs combined limit": warm["steady img/s"] / combined,
                     "peak RSS MB": max(cold["peak RSS MB"], warm["peak RSS MB"])})
    body = (f"{a.n:,} Kaggle JPEGs ({a.n // a.per_sample} samples), as in `scoring`; each "
            f"layout in a fresh Ray session, run twice (cold, then Ray up). Combined limit "
            f"{combined:,.0f} img/s. The first row swaps the pre-change Predictor into the "
            "pipeline (`PreChangePredictor`). On a CPU-only cluster Ray Data fuses the decode "
            "stage into the model actors (same resources), so each actor decodes and "
            "predicts its batches in turn.\n\n"
            + table(rows, ["actor layout", "s incl. Ray start", "img/s incl. Ray start",
                           "s, Ray up", "steady img/s (Ray up)", "steady vs combined limit",
                           "peak RSS MB"]))
    write_section("scoring-actor-layouts", body,
                  f"python bench/score.py --only layouts --n {a.n} --per-sample {a.per_sample}")


def memory(a, tmp: Path, checkpoint: str) -> None:
    import ray

    rows = []
    for n in a.memory:
        root = tmp / f"mem-{n}"
        make_archive(root, n, a.per_sample)
        r = wbc_score(str(root), checkpoint, str(tmp / f"mem-out-{n}"), n, a.per_sample,
                      a.actors, a.ray_cpus, pss=True)
        ray.shutdown()  # a fresh session per size: the peaks compare like with like
        rows.append({"images": f"{n:,}", "samples": n // a.per_sample, **r})
    for r in rows:
        r["PSS vs smallest"] = r["peak PSS MB"] / rows[0]["peak PSS MB"]
        r["RSS vs smallest"] = r["peak RSS MB"] / rows[0]["peak RSS MB"]
    body = ("Peak memory of the whole local Ray session: the driver process and all its "
            "descendants (GCS, raylet, workers, model actors, dashboard, log monitor), "
            "sampled once a second. RSS (`/proc/<pid>/statm`) counts shared pages (shared "
            "libraries, the object store) once per process that maps them; PSS "
            "(`/proc/<pid>/smaps_rollup`) divides them among those processes, so the PSS sum "
            "is the session's footprint. Each size runs in a fresh Ray session, Ray start "
            "included; the PSS sampling costs the driver CPU, so take throughput from the "
            f"`scoring` section. {_layout_note(a)}\n\n"
            + table(rows, ["images", "samples", "seconds", "peak RSS MB", "RSS vs smallest",
                           "peak PSS MB", "PSS vs smallest", "processes"]))
    write_section("scoring-memory", body, _command(a, memory_only=True))


def _layout_note(a) -> str:
    return (f"ScoreConfig.actors={a.actors}, Ray CPUs={a.ray_cpus or CORES}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.")


def _command(a, memory_only: bool = False) -> str:
    extra = (f" --actors {a.actors}" if a.actors else "") + \
        (f" --ray-cpus {a.ray_cpus}" if a.ray_cpus else "")
    if memory_only:
        return (f"python bench/score.py --only memory --per-sample {a.per_sample} "
                f"--memory {' '.join(map(str, a.memory))}{extra}")
    return f"python bench/score.py --only throughput --n {a.n} --per-sample {a.per_sample}{extra}"


SECTIONS = {"ablation": ablation, "profile": profile, "throughput": throughput,
            "layouts": layouts, "memory": memory}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--per-sample", type=int, default=100)
    ap.add_argument("--memory", type=int, nargs="+", default=[10_000, 50_000],
                    help="archive sizes for the memory section")
    ap.add_argument("--actors", type=int, default=None, help="ScoreConfig.actors")
    ap.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs given to Ray")
    ap.add_argument("--only", choices=list(SECTIONS), action="append",
                    help="run only these sections (repeatable); default: all")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wbc-bench-score-") as d:
        tmp = Path(d)
        # A private Ray temp dir: with RAY_ADDRESS unset, ray.init() joins the cluster of
        # the last `ray start` on this machine (/tmp/ray/ray_current_cluster), if any,
        # instead of starting the local session this bench measures.
        os.environ.setdefault("RAY_TMPDIR", str(tmp / "ray"))
        checkpoint = untrained_checkpoint(str(tmp / "checkpoint"))
        for name in a.only or SECTIONS:
            SECTIONS[name](a, tmp, checkpoint)


if __name__ == "__main__":
    main()
