"""Model-only throughput: torch Predictor (bf16/fp32, eager/compiled) vs ONNX Runtime.

    python bench/onnx_speed.py [--batch 256] [--threads 1 2] [--repeats 9]

The same ``--batch`` decoded Kaggle TRAIN images go through each contender's ``predict``
(uint8 NHWC in, probabilities out: normalisation included); the figure is the median of
``--repeats`` timed calls after two warm-up calls, in images per second; the contenders
take turns call by call. Each thread
count runs in its own process with ``OMP_NUM_THREADS`` set, as Ray sets it for an actor;
torch gets ``torch.set_num_threads``, ONNX Runtime ``intra_op_num_threads`` (read from
the environment by OnnxPredictor). The checkpoint is an untrained paper CNN: speed does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial

from common import call_times, decoded, kaggle_files, machine, table, untrained_checkpoint

CONTENDERS = {  # name -> (runtime, constructor kwargs)
    "torch eager auto (bf16 with AMX or AVX512_BF16)": ("torch", {"precision": "auto"}),
    "torch eager fp32": ("torch", {"precision": "fp32"}),
    "torch.compile auto": ("torch", {"precision": "auto", "compile": True}),
    "torch.compile fp32": ("torch", {"precision": "fp32", "compile": True}),
    "onnxruntime fp32, whole batch": ("onnx", {}),
    "onnxruntime fp32, chunks of 32": ("onnx", {"chunk": 32}),
    "onnxruntime fp32, chunks of 64": ("onnx", {"chunk": 64}),
}


def checkpoint(directory: str) -> tuple[str, str]:
    """(an untrained paper-CNN checkpoint, its ONNX export)."""
    from wbc_ray.models.export import export_onnx

    ckpt = untrained_checkpoint(os.path.join(directory, "ckpt"))
    return ckpt, export_onnx(ckpt, os.path.join(directory, "model.onnx"))


def child(args) -> None:
    """One thread count: every contender, rows as JSON on stdout."""
    import torch

    from wbc_ray.models.onnx_predictor import OnnxPredictor
    from wbc_ray.models.predictor import Predictor

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    runtimes = {"torch": lambda kw: Predictor(args.ckpt, **kw),
                "onnx": lambda kw: OnnxPredictor(args.onnx, **kw)}
    x = decoded(kaggle_files(args.batch))
    predictors = {name: runtimes[rt](kw) for name, (rt, kw) in CONTENDERS.items()}
    got = call_times({name: partial(p.predict, x) for name, p in predictors.items()},
                     args.repeats)  # median (wall s, CPU s) per call
    print(json.dumps([{"contender": k, "threads": threads, "img/s": len(x) / wall}
                      for k, (wall, _) in got.items()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ckpt:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, onnx_file = checkpoint(tmp)
        for t in args.threads:
            out = subprocess.run(
                [sys.executable, __file__, "--batch", str(args.batch), "--repeats",
                 str(args.repeats), "--ckpt", ckpt, "--onnx", onnx_file],
                env={**os.environ, "OMP_NUM_THREADS": str(t)}, check=True,
                stdout=subprocess.PIPE, text=True).stdout
            rows += json.loads(out.strip().splitlines()[-1])
    print(f"`python bench/onnx_speed.py --batch {args.batch} --threads "
          f"{' '.join(map(str, args.threads))} --repeats {args.repeats}` on {machine()}\n")
    print(table(rows, ["contender", "threads", "img/s"]))


if __name__ == "__main__":
    main()
