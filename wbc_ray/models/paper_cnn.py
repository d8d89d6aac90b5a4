"""The CNN proposed by Asghar et al. (2022), as the paper describes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wbc_ray.models.registry import register


class MaxPool2x2Stride1(nn.MaxPool2d):
    """``nn.MaxPool2d(2, stride=1)`` with a faster inference path; identical outputs.

    ATen's CPU max-pool also computes int64 argmax indices, and the paper's stride-1 pools
    took ~45% of eager CPU inference time (torch.profiler, batch 256). Without autograd,
    on CPU, the same maximum is two elementwise passes over shifted views (along W, then
    H), which keep channels-last: 2.7-10x faster per pool in bf16 (docs/PERFORMANCE.md).
    With autograd the stock op runs, so training gradients stay the stock ones
    (``torch.maximum`` splits the gradient between tied inputs); GPUs, where this was not
    measured, keep the stock op too.
    """

    def __init__(self) -> None:
        super().__init__(2, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        w = torch.maximum(x[..., :-1], x[..., 1:])
        return torch.maximum(w[..., :-1, :], w[..., 1:, :])


class PaperCNN(nn.Module):
    """Three conv blocks and a dense head, for 100x100x3 inputs.

    Each block: conv 3x3 -> ReLU -> max-pool 2x2 with stride 1 -> dropout 0.2. Filters
    32 (stride 1), 64 (stride 2), 64 (stride 1); no padding (Keras' default "valid").
    Then flatten -> dense 64 ReLU -> one logit per class (softmax belongs to the loss).

    Ambiguity in the paper: the text says "two fully connected hidden layers" but lists
    only one of 64 units (then the output layer). ``hidden`` holds the hidden widths and
    defaults to the listed ``(64,)``; pass ``(64, 64)`` for the other reading.
    """

    def __init__(self, num_classes: int = 4, hidden: Sequence[int] = (64,),
                 dropout: float = 0.2, in_size: int = 100):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride), nn.ReLU(inplace=True),
                    MaxPool2x2Stride1(), nn.Dropout(dropout)]

        self.features = nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 64, 1))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 3, in_size, in_size)).numel()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(n_flat, width), nn.ReLU(inplace=True)]
            n_flat = width
        layers.append(nn.Linear(n_flat, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("paper_cnn", input_size=100, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
          params=("hidden", "dropout", "input_size"))
def paper_cnn(num_classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.2,
              input_size: int | None = None) -> nn.Module:
    return PaperCNN(num_classes, hidden=hidden, dropout=dropout, in_size=input_size or 100)
