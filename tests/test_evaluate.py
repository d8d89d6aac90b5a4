"""`wbc-ray evaluate` end to end: metrics.json, Markdown and PNG for a checkpoint and folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.cli import app
from wbc_ray.data.synthetic import make_dataset
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("paper_cnn", 4)
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES, {"hidden": [64], "dropout": 0.2},
                                    config={"data": {"seed": 5, "fractions": [0.5, 0.25, 0.25]}})
    return save_checkpoint(str(tmp_path_factory.mktemp("ck") / "best"), model, meta)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_dataset(str(root), per_class=10)
    (root / "MONOCYTE" / "broken.jpeg").write_bytes(b"\xff\xd8garbage")
    return root


def test_evaluate_writes_metrics_markdown_and_png(ray_session, checkpoint, folder, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", checkpoint, "--data", str(folder),
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == list(PAPER_CLASSES)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 40 == m["n"]
    assert cm.sum(1).tolist() == [10, 10, 10, 10]  # rows are truth
    assert m["accuracy"] == pytest.approx(np.trace(cm) / 40)
    for cls in PAPER_CLASSES:
        assert set(m["per_class"][cls]) >= {"precision", "recall", "f1", "support"}
    assert m["counts"]["quarantined"] == 1  # the broken file is accounted for
    md = (out / "metrics.md").read_text()
    assert "MONOCYTE" in md and "F-measure" in md
    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_evaluate_rebuilds_the_training_split_from_the_checkpoint(ray_session, checkpoint,
                                                                   folder, tmp_path):
    from wbc_ray.workflows.evaluate import evaluate

    m = evaluate(checkpoint, str(folder), split="paper", part="test",
                     output=str(tmp_path / "e"))
    from wbc_ray.data.sources import list_inputs
    from wbc_ray.data.splits import assign_splits

    rec = assign_splits(list_inputs(str(folder), PAPER_CLASSES).records, "paper",
                        (0.5, 0.25, 0.25), seed=5)  # seed and fractions of the checkpoint
    expected = rec[(rec.split == "test") & ~rec.uri.str.endswith("broken.jpeg")]
    assert m["n"] == m["counts"]["test"] == len(expected)
