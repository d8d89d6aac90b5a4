"""The fast recipe's pieces: learning-rate schedules, the checkpoint argument, range checks."""

from __future__ import annotations

import math

import pytest
import torch

from wbc_ray.config import ConfigError, load_run_config
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import CheckpointMeta, resolve_checkpoint, save_checkpoint
from wbc_ray.training.loop import lr_factor


def test_warmup_then_cosine_reaches_zero_at_the_end():
    f = [lr_factor(e, 10, "cosine", warmup_epochs=1) for e in (0.0, 0.5, 1.0, 5.5, 10.0)]
    assert f[0] < 0.01 and f[1] == pytest.approx(0.5)
    assert f[2] == pytest.approx(1.0) and f[3] == pytest.approx(0.5)
    assert f[4] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(f[2:], f[3:], strict=False))  # decays after warm-up


def test_constant_schedule_is_the_papers():
    assert {lr_factor(e, 150, "constant") for e in (0, 3.3, 149)} == {1.0}
    assert lr_factor(9.9, 10, "onecycle") == pytest.approx(0.04, abs=1e-3)
    assert not math.isnan(lr_factor(0, 1, "cosine"))


@pytest.mark.parametrize("override,key", [
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"workers": 0}}, "train.workers"),
    ({"train": {"lr": -1.0}}, "train.lr"),
    ({"train": {"warmup_epochs": 5.0, "epochs": 3}}, "train.warmup_epochs"),
    ({"data": {"fractions": [0.5, 0.2, 0.2]}}, "data.fractions"),
    ({"score": {"run_date": "2026-13-01"}}, "score.run_date"),
    ({"preprocess": {"normalise": "macenko"}}, "preprocess.normalise"),
    ({"model": {"bn": "group"}}, "model.bn"),
])
def test_ranges_are_part_of_the_config_types(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_run_config(None, override)


def test_unknown_key_names_the_file_line_and_a_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  split: grouped\ntrain:\n  epoch: 4\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(str(path))
    assert str(e.value) == f"train.epoch: unknown key; did you mean epochs? (in {path}:4)"


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: [4\n")
    with pytest.raises(ConfigError, match=rf"\(in {path}:\d+\)$"):
        load_run_config(str(path))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    meta = CheckpointMeta.for_model("paper_cnn", ["A", "B"], {"hidden": [8]},
                                    preprocess={"locate": True, "normalise": "reinhard"})
    save_checkpoint(str(root / "best"), build_model("paper_cnn", 2, hidden=[8]), meta)
    return root


@pytest.mark.parametrize("given", ["", "best", "best/model.safetensors", "best/meta.json"])
def test_checkpoint_argument_accepts_run_checkpoint_or_weights_file(run_dir, given):
    uri = str(run_dir / given) if given else str(run_dir)
    assert resolve_checkpoint(uri) == str(run_dir / "best")


def test_checkpoint_argument_rejects_anything_else_in_one_line(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for bad in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(FileNotFoundError, match="is not a wbc-ray checkpoint: expected"):
            resolve_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))


def test_preprocessing_spec_travels_in_the_checkpoint(run_dir):
    from wbc_ray.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(str(run_dir / "best"))
    assert meta.preprocess == {"locate": True, "normalise": "reinhard"}
    assert model(torch.zeros(1, 3, 100, 100)).shape == (1, 2)
