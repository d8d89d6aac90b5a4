"""Plain-PyTorch training and evaluation steps. No Ray here: unit-testable on tensors."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from wbc_ray.data.augment import augment_batch
from wbc_ray.models.inputs import Normalise, autocast

Batch = dict[str, torch.Tensor]  # {"image": uint8 (N, H, W, 3), "label_idx": int64 (N,)}

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; "
                         f"choose one of {sorted(OPTIMIZERS)}") from None
    return cls([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def lr_factor(progress: float, epochs: int, schedule: str = "constant",
              warmup_epochs: float = 0.0) -> float:
    """Learning-rate multiplier at ``progress`` epochs into a run of ``epochs`` (pure)."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return max(progress / warmup_epochs, 1e-3)
    if schedule == "constant":
        return 1.0
    span = max(epochs - warmup_epochs, 1e-9)
    t = min(max((progress - warmup_epochs) / span, 0.0), 1.0)
    return SCHEDULES[schedule](t)


SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    # one-cycle's decay half after the warm-up: cosine down to 1/25 of the peak
    "onecycle": lambda t: 0.04 + 0.96 * 0.5 * (1.0 + math.cos(math.pi * t)),
}


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], optimizer, norm: Normalise,
                    device: torch.device, precision: str = "fp32", augment: bool = True,
                    loss_fn: nn.Module | None = None, scaler=None,
                    before_step: Callable[[int], None] | None = None,
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    ) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss, accuracy, images and images/s.

    ``before_step(i)`` runs before the i-th optimizer step (learning-rate schedules);
    ``transform`` maps uint8 NHWC images to float NCHW in [0, 1] with random colour/scale
    augmentation, before normalisation (training only).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    total_loss, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
    for i, batch in enumerate(batches):
        if before_step is not None:
            before_step(i)
        images = batch["image"].to(device, non_blocking=True)
        if transform is not None:
            images = transform(images)
        x = norm(images)
        y = batch["label_idx"].to(device, non_blocking=True).long()
        if augment:
            x = augment_batch(x)
        with autocast(device, precision):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    dt = time.perf_counter() - t0
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "images": n,
            "seconds": dt, "images_per_s": n / dt if dt > 0 else 0.0}


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch], norm: Normalise, device: torch.device,
             precision: str = "fp32", return_probs: bool = False) -> dict:
    """Mean cross-entropy and accuracy; with ``return_probs`` also labels and probabilities."""
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    labels, probs = [], []
    for batch in batches:
        x = norm(batch["image"].to(device))
        y = batch["label_idx"].to(device).long()
        with autocast(device, precision):
            logits = model(x).float()
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        if return_probs:
            labels.append(y.cpu())
            probs.append(logits.softmax(1).cpu())
    out = {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "images": n}
    if return_probs:
        out["labels"] = torch.cat(labels).numpy() if labels else None
        out["probs"] = torch.cat(probs).numpy() if probs else None
    return out


class EarlyStopping:
    """Tracks the best validation loss; ``step`` returns True when patience is exhausted."""

    def __init__(self, patience: int | None, best: float = float("inf"), bad_epochs: int = 0):
        self.patience, self.best, self.bad_epochs = patience, best, bad_epochs

    def step(self, val_loss: float) -> tuple[bool, bool]:
        """Returns (improved, should_stop)."""
        improved = val_loss < self.best
        if improved:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        stop = self.patience is not None and self.bad_epochs >= self.patience
        return improved, stop
