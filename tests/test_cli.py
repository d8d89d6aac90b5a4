"""The CLI parses and calls: check what reaches the library, help texts, errors."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from wbc_ray.cli import app

runner = CliRunner()


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture
def captured_train(monkeypatch):
    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        hist = [{"val_loss": 0.5}]
        return SimpleNamespace(result=SimpleNamespace(run_dir="r", best_checkpoint="r/best",
                                                      history=hist), test_metrics=None)

    monkeypatch.setattr("wbc_ray.workflows.train.train", fake_train)
    monkeypatch.setattr("wbc_ray.workflows.preflight.check_train", lambda cfg: None)
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    return seen


def test_train_gpus_8_as_written(captured_train):
    res = runner.invoke(app, ["train", "--gpus", "8", "--data", "s3://lab/cells"])
    assert res.exit_code == 0, res.output
    cfg = captured_train["cfg"]
    assert cfg.train.gpus == 8 and cfg.data.data == "s3://lab/cells"
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.name) == (150, 1e-4, "paper_cnn")


def test_train_flags_override_yaml(captured_train, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epochs: 9\n  batch_size: 16\ndata:\n  split: official\n")
    res = runner.invoke(app, ["train", "--config", str(cfg_file), "--epochs", "2", "--workers",
                              "2", "--model", "mobilenet_v2", "--split", "grouped"])
    assert res.exit_code == 0, res.output
    cfg = captured_train["cfg"]
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.workers) == (2, 16, 2)
    assert cfg.data.split == "grouped" and cfg.model.name == "mobilenet_v2"


def test_bad_config_exits_2_with_message(captured_train, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epocs: 9\n")
    res = runner.invoke(app, ["train", "--config", str(cfg_file)])
    assert res.exit_code == 2
    assert "epocs" in _plain(res.output) and "c.yaml" in _plain(res.output)
    assert "cfg" not in captured_train


def test_bad_split_value_is_rejected(captured_train):
    res = runner.invoke(app, ["train", "--split", "random", "--data", "x"])
    assert res.exit_code == 2 and "split" in _plain(res.output)


def test_score_passes_options(monkeypatch):
    seen = {}
    monkeypatch.setattr("wbc_ray.scoring.pipeline.score",
                        lambda cfg, **kw: seen.setdefault("cfg", cfg) and {"ok": True})
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    monkeypatch.setattr("wbc_ray.workflows.preflight.check_score", lambda cfg: cfg)
    res = runner.invoke(app, ["score", "--checkpoint", "ck", "--input", "s3://a/in", "--output",
                              "s3://a/out", "--rescore", "--min-cells", "50", "--actors", "3",
                              "--batch-size", "64"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.checkpoint, cfg.input, cfg.output) == ("ck", "s3://a/in", "s3://a/out")
    assert cfg.rescore is True and cfg.min_cells == 50 and cfg.review_threshold == 0.6
    assert (cfg.actors, cfg.batch_size) == (3, 64)


def test_evaluate_passes_options(monkeypatch):
    seen = {}

    def fake(*args):
        seen["args"] = args
        return {"accuracy": 0.9, "macro": {"f1": 0.8}, "n": 10}

    monkeypatch.setattr("wbc_ray.workflows.evaluate.evaluate", fake)
    monkeypatch.setattr("wbc_ray.workflows.preflight.check_evaluate", lambda ck, d, o: ck)
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    res = runner.invoke(app, ["evaluate", "--checkpoint", "ck", "--data", "d", "--split",
                              "grouped", "--output", "o"])
    assert res.exit_code == 0, res.output
    assert seen["args"] == ("ck", "d", "grouped", "test", None, "o")


@pytest.mark.parametrize("cmd,options", [
    ([], ["train", "evaluate", "tune", "score", "demo", "data"]),
    (["train"], ["--data", "--model", "--gpus", "--workers", "--epochs", "--batch-size",
                 "--split", "--output", "--config"]),
    (["evaluate"], ["--checkpoint", "--data", "--output", "--split"]),
    (["tune"], ["--data", "--trials", "--max-epochs", "--gpus-per-trial", "--output"]),
    (["score"], ["--checkpoint", "--input", "--output", "--rescore"]),
    (["demo"], ["--output"]),
    (["data", "audit"], ["--data", "--split"]),
])
def test_help_lists_the_contract(cmd, options):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0
    out = _plain(res.output)
    for opt in options:
        assert opt in out, (cmd, opt)


def test_models_lists_registry():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    for name in ("paper_cnn", "resnet50", "inception_v3", "vgg16", "mobilenet_v2"):
        assert name in res.output


def test_tune_passes_options(monkeypatch):
    seen = {}
    monkeypatch.setattr("wbc_ray.tuning.sweep.run_sweep",
                        lambda cfg: seen.setdefault("cfg", cfg) and "sweep done")
    monkeypatch.setattr("wbc_ray.storage.check_readable", lambda uri: None)
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    res = runner.invoke(app, ["tune", "--data", "d", "--trials", "5", "--max-epochs", "7",
                              "--gpus-per-trial", "1", "--output", "s3://b/tune"])
    assert res.exit_code == 0, res.output
    t = seen["cfg"].tune
    assert (t.trials, t.max_epochs, t.gpus_per_trial, t.output) == (5, 7, 1.0, "s3://b/tune")
    assert seen["cfg"].data.data == "d"
