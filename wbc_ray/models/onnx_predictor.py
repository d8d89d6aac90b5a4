"""Batch inference with ONNX Runtime, with the same contract as the torch ``Predictor``."""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile

import numpy as np

from wbc_ray import storage
from wbc_ray.models.checkpoint import META, STATE, WEIGHTS, resolve_checkpoint
from wbc_ray.models.export import INPUT, export_onnx, read_onnx_meta, require
from wbc_ray.models.predictor import BatchPredictor

ONNX_CACHE = os.path.join(tempfile.gettempdir(), "wbc-ray-onnx")


def is_onnx_file(uri: str) -> bool:
    """``uri`` names an ONNX file rather than a checkpoint (directory or a file in one)."""
    if uri.endswith(".onnx"):
        return True
    fs, path = storage.filesystem(uri)
    return fs.isfile(path) and posixpath.basename(path) not in (WEIGHTS, META, STATE)


def cached_export(checkpoint: str, cache: str | None = None) -> str:
    """An ONNX export of ``checkpoint``, made once per weights + meta: a local file under
    ``cache`` (None: :data:`ONNX_CACHE`, in the temp folder)."""
    directory = resolve_checkpoint(checkpoint)
    key = hashlib.sha256(storage.read_bytes(storage.join(directory, WEIGHTS))
                         + storage.read_bytes(storage.join(directory, META))).hexdigest()[:16]
    path = os.path.join(cache or ONNX_CACHE, f"{key}.onnx")
    if not os.path.exists(path):  # concurrent actors: write_bytes publishes atomically
        export_onnx(directory, path)
    return path


def default_threads() -> int:
    """The actor's CPUs: Ray sets ``OMP_NUM_THREADS`` to them; else 0 (ORT's default)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


class OnnxPredictor(BatchPredictor):
    """``map_batches`` class: ``image`` (N, S, S, 3) uint8 -> ``probs`` (N, C) float32.

    ``checkpoint``: a wbc-ray ``.onnx`` file (path or URI; meta read from its metadata) or
    a checkpoint (directory, run directory, or a file in one: exported once to a cached
    temp file). Rows with a non-empty ``error`` column get NaN probabilities, as with
    :class:`Predictor`. ``threads``: ONNX Runtime intra-op threads (None: the actor's
    CPUs). ``chunk``: images per ``run`` call (None: the whole batch; ORT gained nothing
    from chunking here, unlike torch: bench/onnx_speed.py). fp32 only: ONNX Runtime's CPU
    kernels have no bf16 convolutions.
    """

    def __init__(self, checkpoint: str, threads: int | None = None, chunk: int | None = None,
                 providers: list[str] | None = None):
        ort = require("onnxruntime", "score with ONNX Runtime")
        self.uri = checkpoint if is_onnx_file(checkpoint) else cached_export(checkpoint)
        try:
            data = storage.read_bytes(self.uri)
        except FileNotFoundError:
            raise FileNotFoundError(f"ONNX file {self.uri} does not exist") from None
        _, self.meta, props = read_onnx_meta(data, self.uri)
        self.fingerprint = props.get("wbc_ray.fingerprint")
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                  if p in available]
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as e:  # ORT's own exception types, e.g. a kernel it lacks
            raise ValueError(f"{self.uri}: ONNX Runtime cannot load it: {e}") from e
        self.chunk = chunk
        self.shape = (self.meta.input_size, self.meta.input_size, 3)

    def predict(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.shape[1:] != self.shape:
            shape = ", ".join(map(str, self.shape))
            raise ValueError(f"expected uint8 images of shape (N, {shape}), "
                             f"got {images.dtype} {images.shape}")
        if not len(images):
            return np.zeros((0, len(self.meta.classes)), dtype=np.float32)
        x = np.ascontiguousarray(images)
        step = self.chunk or len(x)
        parts = [self.session.run(["probs"], {INPUT: x[i:i + step]})[0]
                 for i in range(0, len(x), step)]
        return np.concatenate(parts).astype(np.float32, copy=False)


__all__ = ["OnnxPredictor", "cached_export", "is_onnx_file", "ONNX_CACHE"]
