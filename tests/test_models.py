"""Every registered model: forward/backward, frozen recipes, weights loading, checkpoints."""

from __future__ import annotations

import pytest
import torch

from wbc_ray.models import build_model, get_spec, list_models
from wbc_ray.models.checkpoint import (
    CheckpointMeta,
    fingerprint,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from wbc_ray.models.registry import register


def test_paper_cnn_parameter_count_follows_the_paper():
    # conv 3x3: 3->32, 32->64 (stride 2), 64->64, no padding; 2x2 max-pools with stride 1.
    # 100 -> conv 98 -> pool 97 -> conv/2 48 -> pool 47 -> conv 45 -> pool 44.
    convs = (3 * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 9 + 1) * 64
    dense = (64 * 44 * 44 + 1) * 64 + (64 + 1) * 4
    model = build_model("paper_cnn", num_classes=4)
    assert sum(p.numel() for p in model.parameters()) == convs + dense


def test_paper_cnn_hidden_widths_are_configurable():
    two = build_model("paper_cnn", num_classes=5, hidden=(64, 64))
    linears = [m for m in two.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, 5]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name):
    spec = get_spec(name)
    kwargs = {"pretrained": False} if "pretrained" in spec.params else {}
    model = build_model(name, num_classes=4, **kwargs)
    model.train()
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    logits = model(x)
    assert logits.shape == (2, 4)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_frozen_recipe_trains_only_the_head(tmp_path, name):
    # Our own "ImageNet" weights file exercises the offline loading path.
    donor = build_model(name, num_classes=4, pretrained=False)
    trunk_state = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items()
                   if k.startswith("backbone.")}
    path = tmp_path / f"{name}.pt"
    torch.save(trunk_state, path)
    model = build_model(name, num_classes=4, pretrained=True, weights=str(path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    first = next(k for k in trunk_state if k.endswith("weight"))
    assert torch.equal(model.backbone.state_dict()[first], trunk_state[first])
    model.train()
    assert not model.backbone.training  # frozen batch-norm statistics stay ImageNet's
    x = torch.randn(2, 3, 224, 224)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))


def test_finetune_recipe_trains_everything(tmp_path):
    donor = build_model("mobilenet_v2", 4, pretrained=False)
    path = tmp_path / "w.pt"
    torch.save({k.removeprefix("backbone."): v for k, v in donor.state_dict().items()}, path)
    model = build_model("mobilenet_v2", 4, weights=str(path), finetune=True)
    assert all(p.requires_grad for p in model.parameters())


def test_missing_weights_error_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_model("resnet50", 4, weights=str(tmp_path / "nowhere.pt"))


def test_wrong_weights_file_is_rejected(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_model("paper_cnn", 4).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        build_model("mobilenet_v2", 4, weights=str(path))


def test_unpickling_arbitrary_objects_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="not a loadable weights file"):
        load_state_dict(str(path))


def test_checkpoint_round_trip_rebuilds_model_from_directory_alone(tmp_path):
    model = build_model("paper_cnn", 5, hidden=(32,), dropout=0.1).eval()
    meta = CheckpointMeta.for_model("paper_cnn", ["BASOPHIL", "EOSINOPHIL", "LYMPHOCYTE",
                                                  "MONOCYTE", "NEUTROPHIL"],
                                    {"hidden": [32], "dropout": 0.1}, data_fingerprint="abc")
    d = save_checkpoint(str(tmp_path / "ck"), model, meta)
    loaded, meta2 = load_checkpoint(d)
    x = torch.randn(3, 3, 100, 100)
    assert torch.allclose(model(x), loaded(x))
    assert meta2.classes[0] == "BASOPHIL" and meta2.input_size == 100
    assert meta2.data_fingerprint == "abc" and meta2.version
    assert len(fingerprint(d)) == 16


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("paper_cnn", input_size=100)(lambda num_classes, **_: None)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="paper_cnn"):
        build_model("alexnet", 4)


def test_a_setting_the_model_does_not_take_fails_naming_it():
    with pytest.raises(ValueError, match=r"'mobilenet_v2' does not take \['dropout'\]"):
        build_model("mobilenet_v2", 4, pretrained=False, dropout=0.5)
    with pytest.raises(ValueError, match="does not take"):
        build_model("paper_cnn", 4, finetune=True)
