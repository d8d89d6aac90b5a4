"""Per-epoch random augmentation on a batch tensor (runs inside the training step)."""

from __future__ import annotations

import torch


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and 0/90/180/270-degree rotations of an (N, C, H, W) square batch.

    These are the label-preserving augmentations the paper applies to LISC; a cell
    has no canonical orientation on a slide. Each image gets its own draw.
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    out = x.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return out
