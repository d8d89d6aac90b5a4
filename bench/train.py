"""Training throughput: `wbc-ray train` (1 and 2 CPU workers) vs the plain PyTorch loop.

    python bench/train.py [--per-class 300] [--epochs 3] [--batch-size 32]

Same model (paper CNN), data (a Kaggle subset, decoded once), batch size, bf16 autocast and
channels-last for every contender, in one run. Steady-state images/s excludes epoch 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import KAGGLE, Timer, add_ratios, table, write_section

from wbc_ray.config import DataConfig, load_run_config
from wbc_ray.data.decode import decode_resize
from wbc_ray.data.prepare import list_labelled
from wbc_ray.models import build_model
from wbc_ray.models.inputs import Normalise
from wbc_ray.training.loop import make_optimizer, train_one_epoch


def load(per_class: int):
    cfg = DataConfig(data=str(KAGGLE / "images"), limit_per_class=per_class)
    classes, listing = list_labelled(cfg)
    rec = listing.records
    x = np.stack([decode_resize(Path(u).read_bytes(), 100) for u in rec["uri"]])
    y = rec["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return x, y


def plain_loop(x, y, epochs, bs, threads):
    """The script a user would write: tensors in memory, shuffle, step."""
    torch.set_num_threads(threads)
    model = build_model("paper_cnn", 4).to(memory_format=torch.channels_last)
    opt = make_optimizer("adam", model.parameters(), 1e-4)
    norm, dev = Normalise((0.5,) * 3, (0.5,) * 3), torch.device("cpu")
    rates = []
    for _ in range(epochs):
        idx = np.random.permutation(len(x))
        batches = ({"image": torch.from_numpy(x[idx[i:i + bs]]),
                    "label_idx": torch.from_numpy(y[idx[i:i + bs]])}
                   for i in range(0, len(x), bs))
        rates.append(train_one_epoch(model, batches, opt, norm, dev, "bf16", True)["images_per_s"])
    return float(np.mean(rates[1:] or rates))


def model_only(bs, threads, steps=30):
    """The limit: forward+backward+step on one resident batch, no data path at all."""
    torch.set_num_threads(threads)
    model = build_model("paper_cnn", 4).to(memory_format=torch.channels_last).train()
    opt = make_optimizer("adam", model.parameters(), 1e-4)
    xb = torch.randn(bs, 3, 100, 100).contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 4, (bs,))
    for i in range(steps + 5):
        if i == 5:
            t = Timer().__enter__()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t.__exit__()
    return steps * bs / t.seconds


def ray_train(per_class, epochs, bs, workers, cpus_per_worker, out):
    from wbc_ray.ray_session import init_ray
    from wbc_ray.workflows.train import train

    init_ray(num_cpus=os.cpu_count())

    cfg = load_run_config(None, {
        "data": {"data": str(KAGGLE / "images"), "limit_per_class": per_class,
                 "fractions": [0.9, 0.1, 0.0]},
        "train": {"workers": workers, "cpus_per_worker": cpus_per_worker, "epochs": epochs,
                  "batch_size": bs, "precision": "bf16", "output": out,
                  "name": f"bench-{workers}w"}})
    with Timer() as t:
        outcome = train(cfg, evaluate_test=False)
    hist = outcome.result.history
    steady = [h["images_per_s"] for h in hist[1:]] or [hist[0]["images_per_s"]]
    return float(np.mean(steady)), t.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    x, y = load(a.per_class)
    n_train = int(len(x) * 0.9)
    limit = model_only(a.batch_size, cores)
    plain = plain_loop(x[:n_train], y[:n_train], a.epochs, a.batch_size, cores)
    rows = [{"path": f"limit: model-only step, resident batch ({cores} threads)", "img/s": limit},
            {"path": f"plain PyTorch loop, in-memory tensors ({cores} threads)", "img/s": plain}]
    import ray

    with tempfile.TemporaryDirectory() as out:
        for workers, cpw in ((1, cores), (2, max(1, cores // 2))):
            rate, wall = ray_train(a.per_class, a.epochs, a.batch_size, workers, cpw, out)
            rows.append({"path": f"wbc-ray train --workers {workers} ({cpw} CPU each)",
                         "img/s": rate, "wall s (incl. Ray start, decode)": wall})
            ray.shutdown()
    add_ratios(rows, **{"vs plain loop": plain, "vs limit": limit})
    body = (f"Paper CNN, bf16 autocast, channels-last, batch {a.batch_size}, "
            f"{n_train} Kaggle training images ({a.per_class} per class), {a.epochs} epochs; "
            "steady-state images/s (epochs after the first).\n\n"
            + table(rows, ["path", "img/s", "vs plain loop", "vs limit",
                           "wall s (incl. Ray start, decode)"]))
    write_section("training", body, f"python bench/train.py --per-class {a.per_class} "
                                    f"--epochs {a.epochs} --batch-size {a.batch_size}")


if __name__ == "__main__":
    main()
