"""Model-input code shared by training, evaluation and scoring: normalisation and precision."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast context, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a GPU; use bf16 on CPU")
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class Normalise(nn.Module):
    """uint8 NHWC -> float NCHW in the model's normalisation (and memory format)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = True):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) * self.inv_std).contiguous(memory_format=self.memory_format)


def best_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (CUDA, CPUs with AMX/AVX512-BF16), else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    caps = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in caps or ("AVX512" in caps and "avx512_bf16" in cpu_flags()):
        return "bf16"
    return "fp32"  # plain AVX-512 or AVX2 would emulate bf16, slower than fp32


def cpu_flags() -> set[str]:
    """The CPU feature flags the Linux kernel reports (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
