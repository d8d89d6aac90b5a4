"""What a run prints: our lines and progress, not Ray's internal log lines (issue 16).

The end-to-end tests run real drivers as subprocesses, because what reaches a terminal is the
process's stdout and stderr (file descriptors included: Ray's C++ core writes to fd 2).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

from wbc_ray import console

BIN = Path(sys.executable).parent
# Ray's internal chatter seen in `wbc-ray demo` before the fix (issue 16).
NOISE = [r"\(\w+ pid=\d+", "PlacementGroupCleaner", "Failed to query Ray Train Controller",
         r"core_worker\.cc", "TrainingReport\\(", "Reporting training result",
         "Execution plan of Dataset", "logging_progress", "Token authentication",
         "Started a local Ray instance", "Progress bars disabled",
         r"repeated \d+x across cluster", "RayDeprecationWarning", "Checkpoint successfully"]


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(re.search(p, line) for p in NOISE)]


# ---------------------------------------------------------------- units

def test_forward_prints_our_lines_once_and_bars_through_ray(capsys):
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    bar = f'{{"{RAY_TQDM_MAGIC}": true, "x": 1}}'
    seen = []
    batch = {"pid": 42, "ip": "10.0.0.1", "is_err": False, "lines": [
        f"{console.MARKER}epoch 1/3  train loss 0.5", "Reporting training result 1: ...",
        "[2026-12-02 19:48:48,489 E 8296 8341] core_worker.cc:2465: Actor with class name",
        bar, f"{console.MARKER}epoch 2/3  train loss 0.4"]}
    console._forward(batch, original=seen.append)
    assert capsys.readouterr().out == "epoch 1/3  train loss 0.5\nepoch 2/3  train loss 0.4\n"
    assert [b["lines"] for b in seen] == [[bar]]


def test_native_filter_pattern_matches_ray_core_lines_only():
    pat = console._NATIVE_LINE
    assert pat.match(b"[2026-12-02 19:49:36,506 E 7876 7876] core_worker.cc:2465: Actor with")
    assert pat.match(b"[2026-12-02 19:49:36,506 W 7876 7901] gcs_client.cc:10: retrying")
    assert not pat.match(b"[2026-12-02 19:49:36,506 F 7876 7876] raylet.cc:1: Check failed")
    assert not pat.match(b"[1/4] drawing 120 synthetic cells per class")
    assert not pat.match(b"error: --data /nope does not exist")


def test_say_outside_ray_prints_the_plain_line(capsys):
    console.say("3 samples scored")
    console.say("careful", err=True)
    out = capsys.readouterr()
    assert (out.out, out.err) == ("3 samples scored\n", "careful\n")


@pytest.mark.parametrize(("flag", "env", "want"), [
    (False, None, False), (False, "0", False), (False, "1", True), (True, None, True)])
def test_is_verbose(monkeypatch, flag, env, want):
    if env is None:
        monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    else:
        monkeypatch.setenv(console.VERBOSE_ENV, env)
    assert console.is_verbose(flag) is want


# ---------------------------------------------------------------- real drivers

SCRIPT = """
import sys
import ray, ray.data
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from wbc_ray import console
from wbc_ray.ray_session import init_ray

init_ray(num_cpus=4)

def loop(cfg):
    import ray.train as rt
    rank = rt.get_context().get_world_rank()
    print("a plain print in rank", rank)
    for e in range(2):
        if rank == 0:
            console.say(f"epoch {e + 1}/2  our line")
        rt.report({"epoch": e})

TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
             run_config=RunConfig(name="t", storage_path=sys.argv[1])).fit()

class Identity:
    def __call__(self, batch):
        return batch

ray.data.range(8).map_batches(Identity, compute=ray.data.ActorPoolStrategy(size=1)).materialize()
console.say("done")
"""


@pytest.fixture
def short_tmp():
    d = tempfile.mkdtemp(prefix="wbcc-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(args, tmp: str, verbose: bool = False, timeout: int = 600):
    env = {**os.environ, "RAY_TMPDIR": tmp, "WBC_RAY_RUNTIME_DIR": os.path.join(tmp, "run"),
           "WBC_RAY_VERBOSE": "1" if verbose else "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # Ray's token warning is part of what must stay quiet
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_train_and_actor_pool_print_only_our_lines(short_tmp):
    out = _run([sys.executable, "-c", SCRIPT, os.path.join(short_tmp, "runs")], short_tmp)
    assert out.stdout == "epoch 1/2  our line\nepoch 2/2  our line\ndone\n"
    assert noise_in(out.stderr) == [] and out.stderr.strip() == "", out.stderr
    logs = list(Path(short_tmp, "ray").glob(f"session_*/logs/{console.DRIVER_LOG}"))
    assert logs and "Started a local Ray instance" in logs[0].read_text()


@pytest.mark.slow
def test_verbose_restores_rays_output(short_tmp):
    out = _run([sys.executable, "-c", SCRIPT, os.path.join(short_tmp, "runs")], short_tmp,
               verbose=True)
    both = out.stdout + out.stderr
    assert "(RayTrainWorker pid=" in both and "a plain print in rank" in both
    assert "Started a local Ray instance" in both


@pytest.mark.slow
def test_demo_prints_a_short_readable_console(short_tmp):
    """`wbc-ray demo` (train with Ray Train, evaluate, score): no Ray chatter, every epoch
    line once, at most 40 lines in all."""
    epochs = 2
    out = _run([str(BIN / "wbc-ray"), "demo", "--output", os.path.join(short_tmp, "demo"),
                "--epochs", str(epochs), "--per-class", "12"], short_tmp)
    lines = (out.stdout + out.stderr).split("\n")  # "\r" of a progress bar is not a line
    assert noise_in(out.stdout + out.stderr) == []
    for k in range(1, epochs + 1):
        assert len([ln for ln in lines if re.search(rf"\bepoch {k}(/|:|\s)", ln)]) == 1, lines
    assert len(lines) <= 40, lines
