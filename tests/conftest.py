"""Shared fixtures: real data location, a Ray session per module, a real S3 server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WBC_SHARED_DATA", REPO.parent / "shared" / "data"))
KAGGLE = SHARED_DATA / "kaggle-blood-cells"
LISC = SHARED_DATA / "lisc-crops"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token files from test clusters


def require_data(path: Path) -> Path:
    """Real data from ../shared/data: fail in CI when missing, skip elsewhere."""
    if path.exists():
        return path
    msg = f"real data not found at {path} (see ../shared/data/README.md)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def kaggle() -> Path:
    return require_data(KAGGLE)


@pytest.fixture(scope="module")
def lisc() -> Path:
    return require_data(LISC)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray with logical CPUs to spare (Train/Tune + Data on 2 cores), per module."""
    import ray

    from wbc_ray.ray_session import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's real S3 server process on 127.0.0.1 (what s3fs's and Ray's suites use).

    Sets AWS_ENDPOINT_URL and fake credentials in the environment (before Ray starts,
    so workers inherit them) and yields the endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_bucket(endpoint: str, name: str):
    """Create bucket ``name`` and return a fresh s3fs filesystem for it."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    if not fs.exists(name):
        fs.mkdir(name)
    return fs


def kaggle_images(kaggle: Path, n: int, offset: int = 0, stride: int = 37) -> list[Path]:
    """``n`` real TRAIN images, spread over the four classes and over each class folder."""
    from wbc_ray.classes import PAPER_CLASSES

    per_class = [sorted((kaggle / "images" / "TRAIN" / c).glob("*.jpeg")) for c in PAPER_CLASSES]
    return [per_class[i % 4][offset + stride * (i // 4)] for i in range(n)]


def spread_paper_cnn(kaggle: Path, directory: str) -> str:
    """Save an untrained paper CNN with varied labels and confidences on real cells.

    Random weights give every cell the same label; centring the output layer on a few real
    images' features and scaling it spreads labels and confidences (no training needed).
    """
    import numpy as np
    import torch

    from wbc_ray.classes import PAPER_CLASSES
    from wbc_ray.data.decode import decode_resize
    from wbc_ray.models import build_model
    from wbc_ray.models.checkpoint import CheckpointMeta, save_checkpoint
    from wbc_ray.models.inputs import Normalise

    torch.manual_seed(0)
    model = build_model("paper_cnn", num_classes=len(PAPER_CLASSES), hidden=[64], dropout=0.2)
    model.eval()
    x = np.stack([decode_resize(p.read_bytes(), 100) for p in kaggle_images(kaggle, 12, 3)])
    with torch.no_grad():
        h = model.head[:-1](model.features(Normalise((0.5,) * 3, (0.5,) * 3, False)(
            torch.from_numpy(x))))
        model.head[-1].weight.mul_(300.0)
        model.head[-1].bias.copy_(-(model.head[-1].weight @ h.mean(0)))
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES, {"hidden": [64], "dropout": 0.2})
    return save_checkpoint(directory, model, meta)
