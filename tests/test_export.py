"""ONNX export and the ONNX Runtime predictor, checked against torch on real images.

The reference is the fp32 torch :class:`Predictor` (stock eager PyTorch semantics); the
checkpoint is a paper CNN whose output layer is fitted to real Kaggle TRAIN images, so
that its probabilities vary with the image and its argmax spans the classes.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.data.decode import decode_resize
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, fingerprint, save_checkpoint
from wbc_ray.models.inputs import Normalise

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from wbc_ray.models import onnx_predictor  # noqa: E402
from wbc_ray.models.export import export_onnx, read_onnx_meta, stock_layers  # noqa: E402
from wbc_ray.models.onnx_predictor import OnnxPredictor  # noqa: E402
from wbc_ray.models.predictor import Predictor  # noqa: E402

N_TEST = 240  # real TEST images compared (60 per class)


def real_images(root: Path, split: str, per_class: int, size: int = 100):
    """``per_class`` decoded images per class (sorted names, so the same every run)."""
    images, labels = [], []
    for label, cls in enumerate(PAPER_CLASSES):
        for f in sorted((root / "images" / split / cls).glob("*.jpeg"))[:per_class]:
            images.append(decode_resize(f.read_bytes(), size))
            labels.append(label)
    return np.stack(images), np.array(labels)


def fitted_paper_cnn(kaggle: Path, directory: Path, steps: int = 200) -> str:
    """A paper CNN checkpoint whose output layer is fitted to real TRAIN images.

    Features come from a fixed-seed random init (training the whole CNN takes minutes on
    2 cores); only the last linear layer is fitted, on cached hidden features, so the
    probabilities depend on the image and the argmax spans the classes.
    """
    torch.manual_seed(0)
    images, labels = real_images(kaggle, "TRAIN", 64)
    model = build_model("paper_cnn", num_classes=len(PAPER_CLASSES)).eval()
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES)
    norm = Normalise(meta.mean, meta.std, channels_last=False)
    with torch.inference_mode():
        hidden = model.head[:-1](model.features(norm(torch.from_numpy(images))))
    hidden, y, last = hidden.clone(), torch.from_numpy(labels), model.head[-1]
    opt = torch.optim.Adam(last.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(last(hidden), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_checkpoint(str(directory), model, meta)


@pytest.fixture(scope="module")
def checkpoint(kaggle, tmp_path_factory) -> str:
    torch.set_num_threads(2)
    return fitted_paper_cnn(kaggle, tmp_path_factory.mktemp("ckpt") / "paper_cnn")


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory) -> str:
    return export_onnx(checkpoint, str(tmp_path_factory.mktemp("onnx") / "model.onnx"))


@pytest.fixture(scope="module")
def test_images(kaggle) -> np.ndarray:
    return real_images(kaggle, "TEST", N_TEST // len(PAPER_CLASSES))[0]


def test_export_passes_checker_and_has_dynamic_batch(onnx_file):
    model = onnx.load(onnx_file)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [100, 100, 3]
    assert {"MaxPool", "Softmax"} <= {n.op_type for n in model.graph.node}


def test_metadata_round_trips(onnx_file, checkpoint):
    model = onnx.load(onnx_file)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["wbc_ray.classes"]) == list(PAPER_CLASSES)
    assert json.loads(props["wbc_ray.mean"]) == [0.5, 0.5, 0.5]
    assert json.loads(props["wbc_ray.std"]) == [0.5, 0.5, 0.5]
    assert props["wbc_ray.model"] == "paper_cnn" and props["wbc_ray.input_size"] == "100"
    assert props["wbc_ray.fingerprint"] == fingerprint(checkpoint)
    meta = OnnxPredictor(onnx_file).meta
    assert (meta.model, meta.classes, meta.input_size) == ("paper_cnn", PAPER_CLASSES, 100)
    assert (meta.mean, meta.std) == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_dynamic_batch(onnx_file, test_images, n):
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    probs, logits = sess.run(["probs", "logits"], {"image": test_images[:n]})
    assert probs.shape == logits.shape == (n, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_onnx_runtime_matches_torch_on_real_images(checkpoint, onnx_file, test_images,
                                                   monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_predictor, "ONNX_CACHE", str(tmp_path / "cache"))
    want = Predictor(checkpoint, precision="fp32").predict(test_images)
    # a fitted model: probabilities far from uniform, predictions spread over the classes
    assert want.max(1).mean() > 0.3 and len(np.unique(want.argmax(1))) >= 3
    for source in (onnx_file, checkpoint):  # a .onnx file, or a checkpoint exported on load
        got = OnnxPredictor(source, threads=2).predict(test_images)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    (cached,) = (tmp_path / "cache").glob("*.onnx")  # the checkpoint's export, made once
    mtime = cached.stat().st_mtime_ns
    assert OnnxPredictor(checkpoint).uri == str(cached) and cached.stat().st_mtime_ns == mtime


def test_chunked_equals_whole_batch(onnx_file, test_images):
    whole = OnnxPredictor(onnx_file).predict(test_images[:70])
    chunked = OnnxPredictor(onnx_file, chunk=32).predict(test_images[:70])
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_stock_layers_is_equal_model(checkpoint, test_images):
    from wbc_ray.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    stock = stock_layers(model)
    assert not any(type(m).__name__ == "MaxPool2x2Stride1" for m in stock.modules())
    assert any(type(m).__name__ == "MaxPool2x2Stride1" for m in model.modules())  # no mutation
    x = Normalise(meta.mean, meta.std, channels_last=False)(torch.from_numpy(test_images[:8]))
    with torch.inference_mode():
        torch.testing.assert_close(stock(x), model(x))


def test_call_contract_matches_predictor(checkpoint, onnx_file, test_images):
    def batch():
        return {"image": test_images[:6].copy(), "path": np.array([f"p{i}" for i in range(6)]),
                "error": np.array(["", "truncated", "", "", "not an image", ""])}

    want, got = Predictor(checkpoint, precision="fp32")(batch()), OnnxPredictor(onnx_file)(batch())
    assert set(got) == set(want) == {"path", "error", "probs"}
    assert np.array_equal(np.isnan(got["probs"]), np.isnan(want["probs"]))
    assert np.isnan(got["probs"][[1, 4]]).all() and not np.isnan(got["probs"][[0, 2, 3, 5]]).any()
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-4)
    all_bad = OnnxPredictor(onnx_file)({"image": test_images[:2].copy(),
                                         "error": np.array(["x", "y"])})
    assert all_bad["probs"].shape == (2, 4) and np.isnan(all_bad["probs"]).all()
    assert OnnxPredictor(onnx_file).predict(test_images[:0]).shape == (0, 4)


def test_wrong_image_shape_is_named(onnx_file, test_images):
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, 100, 100, 3\)"):
        OnnxPredictor(onnx_file).predict(test_images[:2, :50])


def _foreign_onnx(path: Path) -> None:
    """A valid ONNX model that wbc-ray did not export (no wbc_ray metadata)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "empty", "foreign", "image"])
def test_bad_onnx_file_is_named(onnx_file, kaggle, tmp_path, kind):
    bad = tmp_path / f"{kind}.onnx"
    data = Path(onnx_file).read_bytes()
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        bad.write_bytes(data[:1000] + b"\xff" * 5000 + data[6000:])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "foreign":
        _foreign_onnx(bad)
    else:  # a JPEG renamed to .onnx
        bad.write_bytes(next((kaggle / "images" / "TEST" / "MONOCYTE").glob("*.jpeg")).read_bytes())
    with pytest.raises(ValueError, match=str(bad)) as e:
        OnnxPredictor(str(bad))
    if kind == "foreign":
        assert "not one exported by wbc-ray" in str(e.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxPredictor(str(tmp_path / "nope.onnx"))
    with pytest.raises(FileNotFoundError, match="not-a-checkpoint"):
        OnnxPredictor(str(tmp_path / "not-a-checkpoint"))


def test_corrupt_checkpoint_fails_export_with_its_name(checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "ckpt"
    shutil.copytree(checkpoint, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{bad}: not a loadable checkpoint"):
        export_onnx(str(bad), str(tmp_path / "out.onnx"))


def test_missing_onnxruntime_says_how_to_install(monkeypatch, onnx_file):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "onnxruntime")
    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ImportError, match=r"onnxruntime is not installed: pip install "
                                          r"'wbc-ray\[onnx\]'"):
        OnnxPredictor(onnx_file)


def test_read_meta_rejects_mismatched_signature(onnx_file, tmp_path):
    model = onnx.load(onnx_file)
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["wbc_ray.meta"])
    meta["input_size"] = 64
    onnx.helper.set_model_props(model, {**props, "wbc_ray.meta": json.dumps(meta)})
    with pytest.raises(ValueError, match="input_size 64"):
        read_onnx_meta(model.SerializeToString(), "edited.onnx")


def test_efficientnet_lite0_exports(kaggle, tmp_path):
    """The export is generic: timm's EfficientNet-Lite0 (batch norm, 'same' padding)."""
    pytest.importorskip("timm")
    from wbc_ray.models.registry import list_models

    if "efficientnet_lite0" not in list_models():
        pytest.skip("efficientnet_lite0 is not registered")
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=4, pretrained=False).eval()
    meta = CheckpointMeta.for_model("efficientnet_lite0", PAPER_CLASSES,
                                    model_kwargs={"pretrained": False})
    ckpt = save_checkpoint(str(tmp_path / "lite0"), model, meta)
    out = export_onnx(ckpt, str(tmp_path / "lite0.onnx"))
    images = real_images(kaggle, "TEST", 4, size=meta.input_size)[0]
    want = Predictor(ckpt, precision="fp32").predict(images)
    got = OnnxPredictor(out, threads=2).predict(images)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
