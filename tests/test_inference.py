"""The fast inference paths compute what the stock PyTorch ops compute.

The reference everywhere is plain eager fp32 PyTorch: ``nn.MaxPool2d(2, 1)``, NCHW, the
whole batch in one forward, no autocast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from wbc_ray.models.paper_cnn import MaxPool2x2Stride1
from wbc_ray.models.predictor import Predictor

SHAPES = [(2, 32, 98, 98), (3, 64, 48, 48), (1, 5, 7, 3), (4, 1, 2, 2)]


def _random(shape, dtype, channels_last, ties=False):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    if ties:  # few distinct values: many equal neighbours, as after a ReLU
        x = x.round().clamp(min=0)
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("ties", [False, True])
def test_fast_max_pool_equals_stock(shape, dtype, channels_last, ties):
    x = _random(shape, dtype, channels_last, ties)
    with torch.inference_mode():
        got = MaxPool2x2Stride1()(x)
        want = nn.MaxPool2d(2, stride=1)(x)
    assert got.shape == want.shape
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_fast_max_pool_propagates_nan_and_inf_like_stock():
    x = torch.randn(2, 4, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("-inf")
    x[1, 3, 5, 5] = float("inf")
    with torch.no_grad():
        got, want = MaxPool2x2Stride1()(x), nn.MaxPool2d(2, stride=1)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_fast_max_pool_gradient_is_stock_even_with_ties():
    # torch.maximum splits the gradient between tied inputs; MaxPool2d gives it to one.
    x = _random((2, 3, 9, 9), torch.float32, True, ties=True)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 3, 8, 8)
    (MaxPool2x2Stride1()(a) * g).sum().backward()
    (nn.MaxPool2d(2, stride=1)(b) * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def _stock(model: nn.Module) -> nn.Module:
    """The same model with every fast pool swapped back to ``nn.MaxPool2d(2, 1)``."""
    for mod in model.modules():
        for name, child in mod.named_children():
            if isinstance(child, MaxPool2x2Stride1):
                setattr(mod, name, nn.MaxPool2d(2, stride=1))
    return model


def test_paper_cnn_eval_equals_stock_pools():
    torch.manual_seed(0)
    model = build_model("paper_cnn", 4).eval()
    x = torch.randn(5, 3, 100, 100)
    with torch.no_grad():
        got = model(x.contiguous(memory_format=torch.channels_last))
        want = _stock(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (40, 100, 100, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, images):
    """A paper CNN whose logits spread over several units and classes, so that
    probabilities and winners differ between images (an untrained one is ~uniform)."""
    torch.manual_seed(0)
    model = build_model("paper_cnn", len(PAPER_CLASSES)).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        out = model.head[-1]
        out.weight.mul_(300.0)
        out.bias.mul_(300.0)
        out.bias.sub_(model(x).mean(0))  # centre the logits: no class wins everywhere
    directory = str(tmp_path_factory.mktemp("ckpt"))
    return save_checkpoint(directory, model,
                           CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES))


def _reference(checkpoint: str, images: np.ndarray) -> np.ndarray:
    """Plain eager fp32: NCHW, stock pools, the whole batch at once."""
    model, meta = load_checkpoint(checkpoint)
    model = _stock(model)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return model(x.contiguous()).softmax(1).numpy()


def test_reference_is_not_trivial(checkpoint, images):
    ref = _reference(checkpoint, images)
    assert ref.max(1).min() < 0.9 and ref.max() > 0.5  # neither uniform nor saturated
    assert len(set(ref.argmax(1))) >= 2


@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_predictor_fp32_matches_eager_reference(checkpoint, images, chunk):
    got = Predictor(checkpoint, precision="fp32", chunk=chunk).predict(images)
    np.testing.assert_allclose(got, _reference(checkpoint, images), rtol=0, atol=1e-5)


def test_predictor_bf16_matches_eager_reference_within_bf16_tolerance(checkpoint, images):
    pred = Predictor(checkpoint, precision="bf16")
    assert pred.chunk and next(pred.model.parameters()).dtype == torch.bfloat16
    got, want = pred.predict(images), _reference(checkpoint, images)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05)
    top = np.sort(want, 1)
    clear = top[:, -1] - top[:, -2] > 0.1  # a clear winner must stay the winner
    assert clear.sum() >= len(want) // 2
    assert (got.argmax(1) == want.argmax(1))[clear].all()


def test_predictor_bf16_weights_match_the_autocast_path(checkpoint, images):
    """Casting the weights once computes what autocast computes on every call."""
    fast = Predictor(checkpoint, precision="bf16", chunk=len(images))
    auto = Predictor(checkpoint, precision="bf16", chunk=len(images))
    auto.model.float()
    auto.dtype = torch.float32  # fp32 weights: predict autocasts to bf16, as before
    np.testing.assert_allclose(fast.predict(images), auto.predict(images), rtol=0, atol=1e-2)


def test_predictor_call_keeps_bad_rows_as_nan(checkpoint, images):
    pred = Predictor(checkpoint, precision="fp32")
    batch = {"image": images[:4].copy(), "error": np.array(["", "bad", "", ""], dtype=object)}
    out = pred(batch)
    assert np.isnan(out["probs"][1]).all() and np.isfinite(out["probs"][[0, 2, 3]]).all()
    np.testing.assert_allclose(out["probs"][[0, 2, 3]],
                               _reference(checkpoint, images[[0, 2, 3]]), atol=1e-5)
    assert pred.predict(images[:0]).shape == (0, len(PAPER_CLASSES))


@pytest.mark.parametrize("capability, flags, expected", [
    ("AMX", {"avx512f"}, "bf16"),
    ("AVX512", {"avx512f", "avx512_bf16"}, "bf16"),
    ("AVX512", {"avx512f"}, "fp32"),  # bf16 would be emulated: slower than fp32
    ("AVX2", {"avx2"}, "fp32"),
])
def test_auto_precision_picks_bf16_only_where_the_cpu_runs_it(monkeypatch, capability, flags,
                                                              expected):
    import torch

    from wbc_ray.models import inputs as inference

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(inference, "cpu_flags", lambda: flags)
    assert inference.best_precision(torch.device("cpu")) == expected
