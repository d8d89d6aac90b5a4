"""Batch inference as a callable class: the model is loaded once per actor."""

from __future__ import annotations

import numpy as np
import torch

from wbc_ray.models.checkpoint import load_checkpoint
from wbc_ray.models.inputs import Normalise, autocast, best_precision

# Images per forward pass on CPU. Small chunks keep a chunk's activations in the caches
# (the paper CNN's first conv writes ~0.6 MB per image in bf16): on 2 cores, chunks of 32
# ran the paper CNN 2.1x faster than whole batches of 256 (docs/PERFORMANCE.md).
CPU_CHUNK = 32


class BatchPredictor:
    """A Ray Data ``map_batches`` class: ``predict(images uint8 NHWC) -> probs (N, C)``
    applied to the rows whose decode succeeded (``error == ""``); the others get NaN."""

    meta = None  # the checkpoint's CheckpointMeta, set by the subclass

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop("image")
        ok = batch["error"] == "" if "error" in batch else np.ones(len(images), bool)
        probs = np.full((len(images), len(self.meta.classes)), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = self.predict(images[ok])
        batch["probs"] = probs
        return batch


class Predictor(BatchPredictor):
    """``map_batches`` class: ``image`` (N, S, S, 3) uint8 -> ``probs`` (N, C) float32.

    Rows with a non-empty ``error`` column are passed through with NaN probabilities.

    ``chunk``: images per forward pass (None: :data:`CPU_CHUNK` on CPU, the whole batch on
    GPU); torch's threads are the actor's CPUs (Ray sets them). ``compile``: torch.compile
    the model. Off by default: on CPU it ran the paper CNN at most ~14% faster than this
    eager path, after a warm-up of ~11 s per actor on a cold inductor cache (~1 s with the
    cache on disk), and a new batch shape recompiles (docs/PERFORMANCE.md, "Improvements").
    """

    def __init__(self, checkpoint: str, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, chunk: int | None = None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.meta = load_checkpoint(checkpoint, self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.precision = best_precision(self.device) if precision == "auto" else precision
        # bf16 on CPU: cast the weights once instead of autocasting them on every call
        # (autocast re-casts the 8M-weight dense layer per forward). Same bf16 kernels.
        self.dtype = torch.bfloat16 if (self.device.type == "cpu"
                                        and self.precision == "bf16") else torch.float32
        model = model.to(self.dtype)
        self.model = torch.compile(model) if compile else model
        self.chunk = chunk or (CPU_CHUNK if self.device.type == "cpu" else None)
        self.norm = Normalise(self.meta.mean, self.meta.std, channels_last).to(self.device)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        x = self.norm(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        x = x.to(self.dtype)
        if not len(x):
            return np.zeros((0, len(self.meta.classes)), dtype=np.float32)
        step = self.chunk or len(x)
        with autocast(self.device, "fp32" if self.dtype == torch.bfloat16 else self.precision):
            logits = torch.cat([self.model(x[i:i + step]) for i in range(0, len(x), step)])
        return logits.float().softmax(1).cpu().numpy()

