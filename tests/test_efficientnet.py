"""EfficientNet-Lite0: the packaged ImageNet weights are really loaded, bad weights files fail
naming the file, and the batch-norm modes behave as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from wbc_ray.models import build_model
from wbc_ray.models.efficientnet import (
    TF_MEAN,
    TF_STD,
    imagenet_efficientnet_lite0,
    packaged_weights_path,
    to_timm_layout,
)

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def _imagenet_input(rgb: np.ndarray, side: int = 224) -> torch.Tensor:
    im = Image.fromarray(rgb).resize((side, side), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(TF_MEAN).view(3, 1, 1), torch.tensor(TF_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@pytest.fixture(scope="module")
def imagenet():
    return imagenet_efficientnet_lite0(pretrained=True)


def test_untouched_imagenet_head_recognises_the_packaged_photos(imagenet):
    with torch.no_grad():
        cat = imagenet(_imagenet_input(skdata.chelsea())).softmax(1)[0]
        coffee = imagenet(_imagenet_input(skdata.coffee())).softmax(1)[0]
    assert int(cat.argmax()) in CATS, f"chelsea() top-1 is class {int(cat.argmax())}"
    assert float(cat[list(CATS)].sum()) > 0.5
    assert int(coffee.argmax()) in COFFEE, f"coffee() top-1 is class {int(coffee.argmax())}"


def test_random_weights_do_not_recognise_the_cat():
    """The check above can fail: the same network without the weights file does not see a
    cat (guards against a test that passes whatever was loaded)."""
    torch.manual_seed(0)
    random = imagenet_efficientnet_lite0(pretrained=False)
    with torch.no_grad():
        cat = random(_imagenet_input(skdata.chelsea())).softmax(1)[0]
    assert float(cat[list(CATS)].sum()) < 0.05


def test_every_packaged_tensor_is_loaded(imagenet):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    mapped = to_timm_layout(state, imagenet, "packaged")
    own = imagenet.state_dict()
    assert set(mapped) == set(own)
    differ = [k for k in own if not torch.equal(own[k], mapped[k].to(own[k].dtype))]
    assert differ == []


@pytest.mark.parametrize("content, match", [
    (b"", "efficientnet-bad.pth"),
    (b"not a torch file at all", "efficientnet-bad.pth"),
])
def test_unreadable_weights_file_fails_naming_it(tmp_path, content, match):
    path = tmp_path / "efficientnet-bad.pth"
    path.write_bytes(content)
    with pytest.raises(Exception, match=match):
        build_model("efficientnet_lite0", 4, weights=str(path))


def test_truncated_and_foreign_weights_fail_naming_the_file(tmp_path):
    good = packaged_weights_path()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(good).read_bytes()[: 500_000])
    with pytest.raises(Exception, match="truncated.pth"):
        build_model("efficientnet_lite0", 4, weights=str(truncated))
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, foreign)
    with pytest.raises(ValueError, match="resnet.pth"):
        build_model("efficientnet_lite0", 4, weights=str(foreign))


def _bn_running_means(model) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for m in model.modules()
                      if isinstance(m, torch.nn.BatchNorm2d)])


@pytest.mark.parametrize("bn, changes", [("train", True), ("frozen", False)])
def test_batch_norm_modes(bn, changes):
    model = build_model("efficientnet_lite0", 4, finetune=True, bn=bn)
    before = _bn_running_means(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert bool((_bn_running_means(model) != before).any()) is changes
    # Frozen BN keeps its affine weights trainable; only the statistics are fixed.
    assert all(p.requires_grad for p in model.parameters())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
