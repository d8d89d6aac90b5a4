"""ImageNet baselines from torchvision with the paper's transfer recipe.

A pretrained convolutional trunk, global-average-pooled, feeds a new dense head.
``finetune=False`` (the paper's recipe) freezes the trunk, including its batch-norm
statistics; ``finetune=True`` trains everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from wbc_ray.models.registry import IMAGENET_MEAN, IMAGENET_STD, register


class TransferModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_features: int, num_classes: int, frozen: bool,
                 hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.frozen = frozen
        self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if self.frozen:  # frozen trunk: keep ImageNet batch-norm statistics
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _load_imagenet(model: nn.Module, weights_enum, weights: str | None) -> None:
    """Load ImageNet weights from ``weights`` (path/URI) or torchvision's cache/download."""
    if weights:
        from wbc_ray.models.checkpoint import load_state_dict

        state = load_state_dict(weights)
    else:
        url = weights_enum.url
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        try:
            state = weights_enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:
            raise RuntimeError(
                f"ImageNet weights for {type(model).__name__} are not available: not in "
                f"{cached} and download from {url} failed ({type(e).__name__}: {e}). "
                f"Offline clusters: pass model.weights=<path or s3:// URI of that file>."
            ) from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The ImageNet classifier (and Inception's auxiliary head) are replaced by our head.
    replaced = ("AuxLogits", "fc.", "classifier.")
    significant = [k for k in missing if not k.startswith(replaced)]
    if significant:
        raise ValueError(f"weights file does not fit {type(model).__name__}: missing "
                         f"{significant[:5]}{'...' if len(significant) > 5 else ''}")
    del unexpected  # e.g. the classifier of a full ImageNet checkpoint we replace anyway


def _trunk(name: str) -> tuple[Callable[..., nn.Module], object, Callable[[nn.Module], int]]:
    """(constructor, weights enum, fn that strips the classifier and returns feature width)."""
    import torchvision.models as tvm  # here, not at import: paper_cnn actors never need it

    def strip_fc(m):
        n = m.fc.in_features
        m.fc = nn.Identity()
        return n

    def strip_classifier(m):
        n = m.classifier[-1].in_features
        m.classifier = nn.Identity()
        return n

    def strip_vgg(m):  # Keras-style include_top=False + global average pooling
        m.avgpool, m.classifier = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        return 512

    return {
        "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, strip_fc),
        "inception_v3": (lambda **kw: tvm.inception_v3(aux_logits=True, init_weights=False, **kw),
                         tvm.Inception_V3_Weights.IMAGENET1K_V1, strip_fc),
        "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, strip_vgg),
        "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
                         strip_classifier),
    }[name]


def build_transfer(name: str, num_classes: int, pretrained: bool = True,
                   weights: str | None = None, finetune: bool = False) -> nn.Module:
    ctor, weights_enum, strip = _trunk(name)
    m = ctor(weights=None)
    if pretrained:
        _load_imagenet(m, weights_enum, weights)
    if name == "inception_v3":
        m.aux_logits, m.AuxLogits = False, None
    n_features = strip(m)
    return TransferModel(m, n_features, num_classes, frozen=pretrained and not finetune)


for _name, _size in (("resnet50", 224), ("inception_v3", 299), ("vgg16", 224),
                     ("mobilenet_v2", 224)):
    register(_name, input_size=_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, pretrained=True,
             params=("pretrained", "weights", "finetune"))(
        lambda num_classes, _n=_name, **kw: build_transfer(_n, num_classes, **kw))
