"""Experiment tracking (MLflow), read back with ``mlflow.MlflowClient`` from the store.

One real tiny training (2 epochs on real Kaggle images), its evaluation and a one-trial
sweep all log to one local store, ``<root>/mlruns``, with secrets planted in the
environment and in the config's URIs: none of them may reach the store. An unreachable
tracking server fails through the CLI in seconds, before Ray starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from wbc_ray import tracking
from wbc_ray.cli import app
from wbc_ray.config import load_run_config, to_dict

# Planted secrets: an environment credential, a password inside an s3 URI's userinfo, and
# a presigned URL's signature. Distinct strings, so a hit names the path that leaked.
ENV_SECRET = "envsecret-5ec4e7d1b2"
TOKEN_SECRET = "tokensecret-77a0c9f3"
URI_SECRET = "urisecret-9b1f2c4e"
QUERY_SECRET = "querysecret-3d8e6a21"
SECRETS = (ENV_SECRET, TOKEN_SECRET, URI_SECRET, QUERY_SECRET)
SECRET_CONFIG = {"score": {"input": f"s3://AKIAEXAMPLE:{URI_SECRET}@lab-archive/slides",
                           "checkpoint": "https://models.lab/prod?X-Amz-Signature="
                                         f"{QUERY_SECRET}&X-Amz-Expires=60"}}
EPOCHS = 2
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def planted_secrets():
    """Autouse, so set before the module's Ray starts: its processes inherit them too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        mp.setenv("WBC_TEST_API_TOKEN", TOKEN_SECRET)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's own client reads the store
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tracked")


@pytest.fixture(scope="module")
def client(root):
    return mlflow.MlflowClient((root / "mlruns").as_uri())


def _only_run(client, experiment: str, **tags):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = [r for r in client.search_runs([exp.experiment_id])
            if all(r.data.tags.get(k) == v for k, v in tags.items())]
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.fixture(scope="module")
def trained(kaggle, ray_session, root):
    from wbc_ray.workflows.train import train

    cfg = load_run_config(None, {
        "data": {"data": str(kaggle / "images"), "split": "grouped", "limit_per_class": 12},
        "train": {"workers": 1, "epochs": EPOCHS, "batch_size": 16, "augment": False,
                  "output": str(root), "name": "tracked"},
        **SECRET_CONFIG})
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def evaluated(kaggle, trained, root):
    from wbc_ray.workflows.evaluate import evaluate

    _, outcome = trained
    return evaluate(outcome.result.best_checkpoint, str(kaggle / "images"), "grouped", "test",
                    None, str(root / "eval-grouped"))


@pytest.fixture(scope="module")
def swept(ray_session, root):
    from wbc_ray.data.synthetic import make_dataset
    from wbc_ray.tuning import run_sweep

    data = make_dataset(str(root / "synthetic"), per_class=10)
    cfg = load_run_config(None, {
        "data": {"data": data}, "train": {"batch_size": 16},
        "tune": {"trials": 1, "max_epochs": EPOCHS, "grace_period": 1, "max_concurrent": 1,
                 "workers_per_trial": 1, "output": str(root), "name": "sweep",
                 "space": {"batch_size": 16}},
        **SECRET_CONFIG})
    return run_sweep(cfg)


# --- train ---------------------------------------------------------------------------


def test_train_logs_the_resolved_config_as_dotted_params(trained, client):
    cfg, outcome = trained
    run = _only_run(client, "wbc-ray-train")
    p = run.data.params
    assert (p["train.epochs"], p["train.lr"], p["model.hidden"]) == ("2", "0.0001", "[64]")
    assert (p["data.split"], p["data.limit_per_class"], p["model.name"]) == ("grouped", "12",
                                                                            "paper_cnn")
    sections = to_dict(cfg)
    assert {k.split(".")[0] for k in p} == set(sections)  # every section, tracking included
    assert p["tracking.enabled"] == "true"
    assert run.data.tags["wbc_ray.run_dir"] == outcome.result.run_dir
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"


def test_train_logs_every_epoch_live_once(trained, client):
    _, outcome = trained
    run = _only_run(client, "wbc-ray-train")
    hist = outcome.result.history
    written = os.path.getmtime(Path(outcome.result.run_dir) / "history.csv")  # after fit
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        logged = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in logged] == list(range(EPOCHS)), key
        assert [m.value for m in logged] == pytest.approx([h[key] for h in hist]), key
        # logged by the Train controller as each epoch was reported, not after the run
        assert logged[0].timestamp / 1000 < written, key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr")] == [1e-4] * 2
    assert run.data.metrics["test.accuracy"] == pytest.approx(outcome.test_metrics["accuracy"])
    assert run.data.metrics["test.macro.f1"] == pytest.approx(
        outcome.test_metrics["macro"]["f1"])


def test_train_logs_its_files_and_a_loadable_checkpoint(trained, client, tmp_path):
    from wbc_ray.models.checkpoint import load_checkpoint

    run = _only_run(client, "wbc-ray-train")
    files = _artifacts(client, run.info.run_id)
    assert {"config.yaml", "data.json", "history.csv", "curves.png", "eval-test/metrics.json",
            "eval-test/metrics.md", "eval-test/confusion_matrix.png", "best/meta.json",
            "best/model.safetensors"} <= files, files
    local = client.download_artifacts(run.info.run_id, "best", str(tmp_path))
    model, meta = load_checkpoint(local)
    assert meta.epoch is not None and meta.classes[0] == "EOSINOPHIL"
    png = client.download_artifacts(run.info.run_id, "curves.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- evaluate and tune ---------------------------------------------------------------


def test_evaluate_logs_its_metrics_and_confusion_matrix(evaluated, trained, client, tmp_path):
    _, outcome = trained
    run = _only_run(client, "wbc-ray-evaluate")
    m = run.data.metrics
    assert m["accuracy"] == pytest.approx(evaluated["accuracy"]) and m["n"] == evaluated["n"]
    assert m["macro.f1"] == pytest.approx(evaluated["macro"]["f1"])
    p = run.data.params
    assert (p["checkpoint"], p["part"], p["data.split"]) == (
        outcome.result.best_checkpoint, "test", "grouped")
    assert {"metrics.json", "metrics.md", "confusion_matrix.png"} <= _artifacts(
        client, run.info.run_id)
    png = client.download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_logs_a_sweep_run_with_one_child_run_per_trial(swept, client):
    sweep = _only_run(client, "wbc-ray-tune", **{"wbc_ray.command": "tune"})
    trial = _only_run(client, "wbc-ray-tune", **{"mlflow.parentRunId": sweep.info.run_id})
    assert sweep.data.params["tune.max_epochs"] == str(EPOCHS)
    assert sweep.data.tags["wbc_ray.best_trial"] == swept.best_trial
    assert sweep.data.metrics["best_val_loss"] == pytest.approx(
        swept.trials["best_val_loss"].min())
    assert {"val_loss.png", "trials.csv", "best_config.yaml", "summary.json",
            "best/meta.json"} <= _artifacts(client, sweep.info.run_id)
    assert set(trial.data.params) == set(swept.best_params)  # the sampled params
    steps = client.get_metric_history(trial.info.run_id, "val_loss")
    assert sorted(m.step for m in steps) == list(range(EPOCHS))
    assert trial.info.status == "FINISHED" and sweep.info.status == "FINISHED"


def test_a_rerun_of_a_run_directory_continues_its_run(tmp_path):
    """What `train` does on a resumed run (same --name), without the training: the same
    MLflow run, the changed params named, only the missing epochs logged."""
    from wbc_ray.config import RunConfig, TrackingConfig, TrainConfig

    def start(epochs):
        return tracking.start_run(TrackingConfig(), command="train", run_dir=str(tmp_path / "r"),
                                  name="r", params=to_dict(RunConfig(train=TrainConfig(
                                      epochs=epochs))))

    rows = [{"epoch": e, "val_loss": 1.0 / (e + 1), "lr": 1e-4} for e in range(3)]
    with start(2) as first:
        first.log_history(rows[:2])
    with start(3) as again:
        again.log_history(rows)  # the restored history: epochs 0-1 were logged already
    assert again.run_id == first.run_id
    c = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    run = c.get_run(first.run_id)
    assert run.data.params["train.epochs"] == "2"  # MLflow keeps a param's first value
    assert run.data.tags["wbc_ray.changed_on_resume"] == "train.epochs: 2 -> 3"
    assert sorted(m.step for m in c.get_metric_history(first.run_id, "val_loss")) == [0, 1, 2]
    assert run.info.status == "FINISHED"


class _Trial:
    """What Tune hands a logger callback: an id, the sampled config, a name."""

    def __init__(self, trial_id, config):
        self.trial_id, self.config = trial_id, config

    def __str__(self):
        return f"run_trial_{self.trial_id}"


def test_a_resumed_sweep_continues_its_trial_runs(tmp_path):
    """Tune pickles the trial logger with the sweep and restores it on a resume: the
    restored copy finds the trial's run again instead of starting a second one."""
    import cloudpickle

    from wbc_ray.config import TrackingConfig

    sweep_dir = str(tmp_path / "sweep")
    with tracking.start_run(TrackingConfig(), command="tune", run_dir=sweep_dir,
                            name="sweep") as parent:
        saved = cloudpickle.dumps(tracking.trial_logger(parent, TrackingConfig(), sweep_dir)[0])
        trial = _Trial("a1", {"lr": 3e-4, "hidden": [128, 64]})
        for epochs in ([0], [1, 2]):  # interrupted after epoch 0, then resumed
            logger = cloudpickle.loads(saved)
            logger.setup()
            logger.log_trial_start(trial)
            for e in epochs:
                logger.log_trial_result(e + 1, trial, {"epoch": e, "val_loss": 1.0 / (e + 1),
                                                       "training_iteration": 1})
        logger.log_trial_end(trial)
    c = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    child = _only_run(c, "wbc-ray-tune", **{"mlflow.parentRunId": parent.run_id})
    assert child.data.params == {"lr": "0.0003", "hidden": "[128, 64]"}
    assert child.data.tags["wbc_ray.run_dir"] == str(tmp_path / "sweep" / "runs" / "trial_a1")
    steps = c.get_metric_history(child.info.run_id, "val_loss")
    assert sorted(m.step for m in steps) == [0, 1, 2]  # the epoch, not Tune's iteration
    assert child.info.status == "FINISHED"


# --- secrets -------------------------------------------------------------------------


def test_no_secret_reaches_the_tracking_store(trained, evaluated, swept, client, root):
    cfg, outcome = trained
    # The secrets really were there to leak: in the run's own config and environment.
    assert URI_SECRET in (Path(outcome.result.run_dir) / "config.yaml").read_text()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == ENV_SECRET
    files = [p for p in (root / "mlruns").rglob("*") if p.is_file()]
    assert len(files) > 100  # params, metrics, tags, artifacts of four runs
    hits = [(str(p.relative_to(root)), s) for p in files for s in SECRETS
            if s.encode() in p.read_bytes()]
    assert hits == []
    p = _only_run(client, "wbc-ray-train").data.params
    assert p["score.input"] == "s3://***@lab-archive/slides"
    assert p["score.checkpoint"] == "https://models.lab/prod?X-Amz-Signature=***&X-Amz-Expires=60"


@pytest.mark.parametrize(("text", "clean"), [
    ("s3://AKIA:se/cr@t@bucket/key", "s3://***@bucket/key"),  # greedy: '@' in a password
    ("https://user:pw@mlflow.lab:5000/api", "https://***@mlflow.lab:5000/api"),
    ("https://h/x?sv=1&sig=abc%2F&se=2", "https://h/x?sv=1&sig=***&se=2"),
    ("s3://bucket/user@v2/key", "s3://bucket/user@v2/key"),  # an '@' in a path is not userinfo
    (f"runs/{ENV_SECRET}/x", "runs/***/x"),  # a secret environment value, anywhere
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_redact(text, clean):
    assert tracking.redact(text) == clean


def test_secret_named_keys_lose_their_values():
    flat = tracking.redact_params({"db": {"password": "x", "host": "h"}, "api_key": "k"})
    assert flat == {"db.password": "***", "db.host": "h", "api_key": "***"}


# --- an unreachable server through the CLI --------------------------------------------


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started although the tracking server is unreachable")


@pytest.mark.parametrize("command", ["train", "tune", "evaluate"])
def test_unreachable_tracking_uri_fails_fast_before_ray(command, kaggle, tmp_path, request,
                                                        monkeypatch):
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", _no_ray)
    data = ["--data", str(kaggle / "images")]
    if command == "evaluate":  # needs a real checkpoint to get past its own checks
        data += ["--checkpoint", request.getfixturevalue("trained")[1].result.best_checkpoint]
    t0 = time.monotonic()
    res = runner.invoke(app, [command, *data, "--output", str(tmp_path / "out"),
                              "--tracking-uri", "http://127.0.0.1:1"])
    took = time.monotonic() - t0
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: MLflow tracking store "
                                                   "http://127.0.0.1:1"), res.output
    assert "Connection refused" in lines[0] and "--no-track" in lines[0]
    assert took < 30, took
    assert not (tmp_path / "out").exists()


def test_a_run_against_an_unreachable_server_fails_quietly_in_bounded_time(caplog, tmp_path):
    from wbc_ray.config import TrackingConfig

    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="Connection refused \\(3 tries"), \
            tracking.start_run(TrackingConfig(uri="http://127.0.0.1:1"), command="train",
                               run_dir=str(tmp_path / "r"), name="r"):
        pytest.fail("the block ran without a tracking run")
    assert time.monotonic() - t0 < 30  # MLflow's own defaults: 7 retries, minutes
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == []


def test_unreachable_environment_uri_fails_and_no_track_skips_it(kaggle, monkeypatch):
    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr("wbc_ray.ray_session.init_ray", lambda *a, **k: None)
    monkeypatch.setattr("wbc_ray.workflows.train.train", fake_train)
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    args = ["train", "--data", str(kaggle / "images")]
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 2 and "http://127.0.0.1:1" in res.output and "cfg" not in seen
    res = runner.invoke(app, [*args, "--no-track"], env=env)
    assert "error: stop here" in res.output and seen["cfg"].tracking.enabled is False
