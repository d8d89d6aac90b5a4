"""Batch inference as a callable class: the model is loaded once per actor."""

from __future__ import annotations

import numpy as np
import torch

from wbc_ray.models.checkpoint import load_checkpoint
from wbc_ray.training.loop import Normalise, autocast


def best_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (CUDA, CPUs with AMX/AVX512-BF16), else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return "fp32"
    return "bf16" if "AMX" in caps.upper() or "AVX512" in caps.upper() else "fp32"


class Predictor:
    """``map_batches`` class: ``image`` (N, S, S, 3) uint8 -> ``probs`` (N, C) float32.

    Rows with a non-empty ``error`` column are passed through with NaN probabilities.
    """

    def __init__(self, checkpoint: str, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.meta = load_checkpoint(checkpoint, self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self.precision = best_precision(self.device) if precision == "auto" else precision
        self.norm = Normalise(self.meta.mean, self.meta.std, channels_last).to(self.device)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        x = self.norm(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        with autocast(self.device, self.precision):
            logits = self.model(x)
        return logits.float().softmax(1).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop("image")
        ok = batch["error"] == "" if "error" in batch else np.ones(len(images), bool)
        probs = np.full((len(images), len(self.meta.classes)), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = self.predict(images[ok])
        batch["probs"] = probs
        return batch
