"""ONNX export: a checkpoint as one self-describing ``.onnx`` file.

The graph's input is what the scoring decode step produces, ``image``: uint8
(N, S, S, 3) RGB in 0..255, S the checkpoint's input size. Normalisation to the model's
float NCHW input happens inside the graph, so a client needs nothing but the file: no
mean/std to copy, no layout to get wrong, and a quarter of the bytes per image of a
float input. Outputs: ``probs`` (softmax) and ``logits``, float32 (N, C). The batch axis
is dynamic (``batch``).

``metadata_props`` carry the spec (all values are strings; JSON where not scalar):

- ``wbc_ray.meta``: the whole :class:`CheckpointMeta` as JSON (config, fingerprint, ...);
- ``wbc_ray.model``, ``wbc_ray.classes``, ``wbc_ray.input_size``, ``wbc_ray.mean``,
  ``wbc_ray.std``: the parts a client needs, readable without parsing the meta;
- ``wbc_ray.input``: the input contract in words;
- ``wbc_ray.fingerprint``: the checkpoint's weights fingerprint (what scoring records);
- ``wbc_ray.format``: version of this layout.

The checkpoint's decode-time preprocessing (``meta.preprocess``: locating the cell,
stain normalisation) is image work in PIL/scikit-image, not tensor ops, so it stays out
of the graph; it travels in ``wbc_ray.meta`` and the decode step applies it as for torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import torch
from torch import nn

from wbc_ray import storage
from wbc_ray.models.checkpoint import CheckpointMeta, fingerprint, load_checkpoint
from wbc_ray.models.inputs import Normalise

FORMAT = "1"
PREFIX = "wbc_ray."
INPUT, OUTPUTS = "image", ("probs", "logits")
INPUT_CONTRACT = "image: uint8 (batch, S, S, 3) RGB 0..255, S = input_size; normalised in-graph"


def require(package: str, purpose: str):
    """Import an optional dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"{package} is not installed: pip install 'wbc-ray[onnx]' "
                          f"(needed to {purpose})") from None


class _Exported(nn.Module):
    """uint8 NHWC images -> (probabilities, logits): the graph that goes into the file."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta):
        super().__init__()
        self.norm = Normalise(meta.mean, meta.std, channels_last=False)
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.norm(image)).float()
        return logits.softmax(1), logits


def stock_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with subclassed layers swapped for the stock ones they equal.

    Inference fast paths (e.g. the paper CNN's ``MaxPool2x2Stride1``: shifted-view maxima
    instead of ATen's pool) are tuned for eager PyTorch; the exporter should see the stock
    op, which ONNX has as one node (``MaxPool``) that ONNX Runtime runs natively.
    """
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.MaxPool2d) and type(child) is not nn.MaxPool2d:
            stock = nn.MaxPool2d(child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.return_indices, child.ceil_mode)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, stock)
    return model


def meta_dict(meta: CheckpointMeta) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(meta), default=list))


def metadata_props(meta: CheckpointMeta, weights_fingerprint: str) -> dict[str, str]:
    """The strings written into the model's ``metadata_props``."""
    return {f"{PREFIX}{k}": v for k, v in {
        "format": FORMAT, "meta": json.dumps(meta_dict(meta)), "model": meta.model,
        "classes": json.dumps(list(meta.classes)), "input_size": str(meta.input_size),
        "mean": json.dumps(list(meta.mean)), "std": json.dumps(list(meta.std)),
        "input": INPUT_CONTRACT, "fingerprint": weights_fingerprint}.items()}


def export_onnx_bytes(checkpoint: str, opset: int | None = None) -> bytes:
    """The checkpoint as a checked, self-describing ONNX model (serialised)."""
    onnx = require("onnx", "export")
    require("onnxscript", "export")  # torch.onnx's exporter needs it
    try:
        model, meta = load_checkpoint(checkpoint)
    except FileNotFoundError:
        raise  # already names the missing file
    except Exception as e:  # e.g. safetensors' "invalid header length" names no file
        raise ValueError(f"{checkpoint}: not a loadable checkpoint "
                         f"({type(e).__name__}: {e})") from e
    graph = _Exported(stock_layers(model), meta).eval()
    example = torch.zeros(2, meta.input_size, meta.input_size, 3, dtype=torch.uint8)
    try:
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=opset, input_names=[INPUT],
            output_names=list(OUTPUTS), dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
            external_data=False, optimize=True, verbose=False)
    except Exception as e:
        raise RuntimeError(f"{checkpoint}: ONNX export of model {meta.model!r} failed: "
                           f"{type(e).__name__}: {e}") from e
    proto = program.model_proto
    proto.producer_name = "wbc-ray"
    proto.doc_string = f"wbc-ray {meta.model} ({', '.join(meta.classes)}); {INPUT_CONTRACT}"
    onnx.helper.set_model_props(proto, metadata_props(meta, fingerprint(checkpoint)))
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_onnx(checkpoint: str, output: str, opset: int | None = None) -> str:
    """Export ``checkpoint`` (a checkpoint directory, local or URI) to ``output`` (a path or
    URI, written whole or not at all); returns ``output``.

    ``opset``: the ai.onnx opset to target (None: the exporter's recommended one).
    """
    storage.write_bytes(output, export_onnx_bytes(checkpoint, opset))
    return output


def read_onnx_meta(data: bytes, uri: str) -> tuple[Any, CheckpointMeta, dict[str, str]]:
    """Parse and check a wbc-ray ONNX file: ``(ModelProto, meta, metadata_props)``.

    Raises ``ValueError`` naming ``uri`` for a corrupt or truncated file, a file that is
    not ONNX, or an ONNX model that wbc-ray did not export (no ``wbc_ray.meta``).
    """
    onnx = require("onnx", "read ONNX files")
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ValueError(f"{uri}: not a readable ONNX model (corrupt, truncated or another "
                         f"format; {len(data)} bytes): {type(e).__name__}: {e}") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if f"{PREFIX}meta" not in props:
        raise ValueError(f"{uri}: an ONNX model, but not one exported by wbc-ray (no "
                         f"'{PREFIX}meta' in its metadata); export one with "
                         f"'wbc-ray export --checkpoint <dir> --format onnx'")
    try:
        meta = meta_from_dict(json.loads(props[f"{PREFIX}meta"]))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{uri}: unreadable '{PREFIX}meta' metadata: {e}") from e
    _check_signature(proto, meta, uri)
    return proto, meta, props


def meta_from_dict(raw: dict[str, Any]) -> CheckpointMeta:
    raw = dict(raw)
    raw["classes"], raw["mean"], raw["std"] = (tuple(raw[k]) for k in ("classes", "mean", "std"))
    return CheckpointMeta(**raw)


def _check_signature(proto, meta: CheckpointMeta, uri: str) -> None:
    """The graph's input/outputs are the ones the metadata promises."""
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT] or not set(OUTPUTS) <= set(outputs):
        raise ValueError(f"{uri}: graph has inputs {inputs} and outputs {outputs}; expected "
                         f"[{INPUT!r}] -> {list(OUTPUTS)}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    got = [d.dim_value or d.dim_param for d in dims]
    s = meta.input_size
    if len(got) != 4 or got[1:] != [s, s, 3]:
        raise ValueError(f"{uri}: input shape {got} does not match the metadata's "
                         f"input_size {s} (expected [batch, {s}, {s}, 3])")


__all__ = ["export_onnx", "export_onnx_bytes", "read_onnx_meta", "metadata_props",
           "stock_layers", "meta_from_dict", "require", "INPUT", "OUTPUTS"]
