"""Every expected failure of the CLI ends in one line ``error: ...`` and exit status 2 (issue 18).

Each case runs the real ``wbc-ray`` app (typer's CliRunner, in this process) with Ray's start
replaced by a tripwire: argument, config and I/O errors must be found by the config types and
``workflows.preflight`` before Ray would start. The line must name what is wrong (the URI, the
file and line, the dotted key) and no traceback may be printed; ``--verbose`` brings it back.
One case runs in a fresh process (``python -m wbc_ray.cli``), where logging is not pytest's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_bucket
from typer.testing import CliRunner

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.cli import app
from wbc_ray.models import build_model
from wbc_ray.models.checkpoint import META, WEIGHTS, CheckpointMeta, save_checkpoint

runner = CliRunner()
UNREACHABLE = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1",  # nothing listens on port 1
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_MAX_ATTEMPTS": "1"}  # botocore's retries only make the case slower


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(scope="module")
def paths(kaggle, s3_server, tmp_path_factory) -> dict[str, str]:
    """A real (untrained) checkpoint, copies with truncated weights and a cut meta.json, a
    random file, a scoring archive and a labelled folder with one real image each, and a moto
    bucket ``wbc`` (no ``nobucket``)."""
    root = tmp_path_factory.mktemp("cli-errors")
    image = sorted((kaggle / "images" / "TEST" / "EOSINOPHIL").glob("*.jpeg"))[0]
    model = build_model("paper_cnn", num_classes=len(PAPER_CLASSES), hidden=[8])
    ckpt = save_checkpoint(str(root / "run" / "best"), model,
                           CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES, {"hidden": [8]}))
    truncated = root / "truncated"
    shutil.copytree(ckpt, truncated)
    weights = truncated / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_meta = root / "bad-meta"
    shutil.copytree(ckpt, bad_meta)
    (bad_meta / META).write_bytes(b'{"model": "paper_cnn", "classes": [')
    (root / "random.bin").write_bytes(os.urandom(4096))
    for folder in (root / "archive" / "S1", root / "data" / "EOSINOPHIL"):
        folder.mkdir(parents=True)
        shutil.copy(image, folder / image.name)
    make_bucket(s3_server, "wbc")
    return {"ckpt": ckpt, "truncated": str(truncated), "bad_meta": str(bad_meta),
            "random": str(root / "random.bin"), "archive": str(root / "archive"),
            "data": str(root / "data"), "out": str(root / "out"), "missing": str(root / "nope")}


@pytest.fixture
def ray_tripwire(monkeypatch):
    """Records (and refuses) any attempt of the CLI to start Ray."""
    import ray

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the CLI started Ray before reporting the error")

    monkeypatch.setattr("wbc_ray.cli._start_ray", refuse)
    monkeypatch.setattr("wbc_ray.ray_session.init_ray", refuse)
    was_up = ray.is_initialized()
    yield calls
    assert ray.is_initialized() == was_up


@pytest.fixture(autouse=True)
def fresh_s3_clients():
    """s3fs caches filesystem instances; a case must not reuse another endpoint's client."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


SCORE = ["score", "--checkpoint", "{ckpt}", "--input", "{archive}", "--output", "{out}"]
TRAIN = ["train", "--data", "{data}", "--output", "{out}"]
EVAL = ["evaluate", "--checkpoint", "{ckpt}", "--data", "{data}", "--output", "{out}"]


def _with(argv: list[str], **options: str) -> list[str]:
    """``argv`` with ``--option value`` replaced or appended."""
    out = list(argv)
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


# id, argv (templates over `paths`, plus {cfg}: the YAML file), YAML text, environment,
# fragments the error line must contain (templates too).
CASES = [
    # --- object storage that cannot be reached, or a bucket that is not there
    ("score-checkpoint-s3-unreachable", _with(SCORE, checkpoint="s3://wbc/models/best"), None,
     UNREACHABLE, ["cannot reach s3://wbc/models/best", "AWS_ENDPOINT_URL"]),
    ("evaluate-checkpoint-s3-unreachable", _with(EVAL, checkpoint="s3://wbc/models/best"), None,
     UNREACHABLE, ["cannot reach s3://wbc/models/best"]),
    ("score-output-s3-unreachable", _with(SCORE, output="s3://wbc/out"), None, UNREACHABLE,
     ["cannot reach s3://wbc/out", "AWS_ENDPOINT_URL"]),
    ("train-output-s3-unreachable", _with(TRAIN, output="s3://wbc/runs"), None, UNREACHABLE,
     ["cannot reach s3://wbc/runs", "AWS_ENDPOINT_URL"]),
    ("score-output-bucket-missing", _with(SCORE, output="s3://nobucket/out"), None, None,
     ["bucket 'nobucket'", "s3://nobucket/out", "does not exist"]),
    ("train-output-bucket-missing", _with(TRAIN, output="s3://nobucket/runs"), None, None,
     ["bucket 'nobucket'", "s3://nobucket/runs", "does not exist"]),
    ("evaluate-output-bucket-missing", _with(EVAL, output="s3://nobucket/eval"), None, None,
     ["bucket 'nobucket'", "s3://nobucket/eval"]),
    ("score-checkpoint-s3-missing", _with(SCORE, checkpoint="s3://wbc/models/none"), None, None,
     ["checkpoint s3://wbc/models/none does not exist"]),
    # --- config files
    ("yaml-unclosed-brace", _with(TRAIN, config="{cfg}"), "train: {epochs: 4\n", None,
     ["{cfg}:2", "flow mapping opened at line 1"]),
    ("yaml-tab", _with(TRAIN, config="{cfg}"), "train:\n\tepochs: 4\n", None,
     ["{cfg}:2", "'\\t'"]),
    ("yaml-unknown-key", _with(TRAIN, config="{cfg}"), "model:\n  name: paper_cnn\ntrain:\n"
     "  epoch: 4\n", None, ["train.epoch: unknown key; did you mean epochs?", "{cfg}:4"]),
    ("yaml-config-missing", _with(TRAIN, config="{missing}.yaml"), None, None,
     ["config file {missing}.yaml does not exist"]),
    # --- ranges (config types)
    ("epochs-0", _with(TRAIN, epochs="0"), None, None, ["train.epochs", ">= 1", "got 0"]),
    ("yaml-epochs-negative", _with(TRAIN, config="{cfg}"), "train:\n  epochs: -3\n", None,
     ["train.epochs", "got -3", "{cfg}:2"]),
    ("workers-0", _with(TRAIN, workers="0"), None, None, ["train.workers", ">= 1"]),
    ("lr-0", _with(TRAIN, lr="0"), None, None, ["train.lr", "> 0"]),
    ("yaml-lr-negative", _with(TRAIN, config="{cfg}"), "train:\n  lr: -1e-3\n", None,
     ["train.lr", "got -0.001", "{cfg}:2"]),
    ("yaml-fractions-not-summing-to-1", _with(TRAIN, config="{cfg}"),
     "data:\n  fractions: [0.5, 0.2, 0.1]\n", None, ["data.fractions", "summing to 1",
                                                     "{cfg}:2"]),
    ("tune-trials-0", ["tune", "--data", "{data}", "--trials", "0"], None, None,
     ["tune.trials", ">= 1"]),
    ("score-bad-run-date", _with(SCORE, run_date="2031-13-45"), None, None,
     ["score.run_date", "YYYY-MM-DD", "2031-13-45"]),
    ("score-review-threshold-above-1", _with(SCORE, review_threshold="1.5"), None, None,
     ["score.review_threshold", "[0, 1]"]),
    # --- missing or broken files
    ("score-checkpoint-missing", _with(SCORE, checkpoint="{missing}"), None, None,
     ["checkpoint {missing} does not exist"]),
    ("evaluate-checkpoint-missing", _with(EVAL, checkpoint="{missing}"), None, None,
     ["checkpoint {missing} does not exist"]),
    ("score-checkpoint-random-file", _with(SCORE, checkpoint="{random}"), None, None,
     ["{random} is not a wbc-ray checkpoint"]),
    ("score-checkpoint-truncated-weights", _with(SCORE, checkpoint="{truncated}"), None, None,
     ["{truncated}/model.safetensors: truncated or corrupt weights file"]),
    ("score-checkpoint-meta-not-json", _with(SCORE, checkpoint="{bad_meta}"), None, None,
     ["{bad_meta}/meta.json: not a wbc-ray checkpoint description"]),
    ("evaluate-checkpoint-truncated-weights", _with(EVAL, checkpoint="{truncated}"), None,
     None, ["{truncated}/model.safetensors: truncated"]),
    ("export-checkpoint-truncated-weights", ["export", "--checkpoint", "{truncated}",
                                             "--output", "{out}/m.onnx"], None, None,
     ["{truncated}/model.safetensors: truncated"]),
    ("score-input-missing", _with(SCORE, input="{missing}"), None, None,
     ["{missing} does not exist"]),
    ("train-data-missing", _with(TRAIN, data="{missing}"), None, None,
     ["{missing} does not exist"]),
]


@pytest.mark.parametrize("argv, yaml_text, env, fragments",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_expected_failure_is_one_error_line_exit_2_before_ray(paths, ray_tripwire, tmp_path,
                                                              argv, yaml_text, env, fragments):
    names = {**paths, "cfg": str(tmp_path / "run.yaml")}
    if yaml_text is not None:
        Path(names["cfg"]).write_text(yaml_text)
    res = runner.invoke(app, [a.format(**names) for a in argv], env=env)
    output = _plain(res.output)
    assert not ray_tripwire, output
    assert res.exit_code == 2, (output, res.exception)
    assert "Traceback" not in output
    lines = _plain(res.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert _plain(res.stdout).strip() == ""
    for fragment in fragments:
        assert fragment.format(**names) in lines[0], lines[0]


def test_verbose_adds_the_traceback(paths, ray_tripwire):
    res = runner.invoke(app, ["score", "--checkpoint", paths["truncated"], "--input",
                               paths["archive"], "--output", paths["out"], "--verbose"])
    output = _plain(res.output)
    assert res.exit_code == 2 and not ray_tripwire
    assert "Traceback" in output and "check_weights" in output
    assert output.strip().splitlines()[-1].startswith("error: ")


def test_missing_bucket_in_a_fresh_process_is_one_line(paths, s3_server):
    """The real entry point in its own process (its own logging set-up, no CliRunner):
    ``wbc-ray score --output s3://<missing bucket>`` against a real S3 server."""
    guard = ("import sys, wbc_ray.cli as cli\n"
             "def refuse(*a, **k):\n"
             "    raise SystemExit('ray started')\n"
             "cli._start_ray = refuse\n"
             "sys.argv[0] = 'wbc-ray'\n"
             "cli.app()\n")
    argv = ["score", "--checkpoint", paths["ckpt"], "--input", paths["archive"], "--output",
            "s3://nobucket/out"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("WBC_RAY_VERBOSE", None)
    done = subprocess.run([sys.executable, "-c", guard, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    assert _plain(done.stderr).strip().splitlines() == [
        "error: bucket 'nobucket' of s3://nobucket/out does not exist"]

