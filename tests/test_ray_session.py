"""The Ray session layer: no secret on disk, no Ray process left behind by a dead driver.

The drivers run as subprocesses (a real ``wbc-ray score``, a driver that blocks), each with
its own short Ray temp dir (Unix socket paths are limited to ~107 characters) and its own
session-record folder, so the tests see only their own Ray processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, make_bucket

from wbc_ray.ray_session import (
    OWNER_ENV,
    _owner_tag,
    cleanup_stale_sessions,
    forwarded_env,
    owned_processes,
)

BIN = Path(sys.executable).parent


@pytest.fixture
def short_tmp():
    """A short temp folder (Ray's socket paths must fit in 107 bytes)."""
    d = tempfile.mkdtemp(prefix="wbcr-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _driver_env(tmp: str, **extra) -> dict:
    env = {**os.environ, "RAY_TMPDIR": tmp,  # Ray's temp dir: <RAY_TMPDIR>/ray
           "WBC_RAY_RUNTIME_DIR": os.path.join(tmp, "run"), "RAY_AUTH_MODE": "disabled",
           **extra}
    env.pop("RAY_ADDRESS", None)
    env.pop(OWNER_ENV, None)
    return env


# ---------------------------------------------------------------- secrets

def test_forwarded_env_keeps_settings_and_drops_secrets():
    environ = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
               "AWS_PROFILE": "lab", "AWS_ACCESS_KEY_ID": "AKIA123",
               "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
               "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=abc", "HOME": "/root"}
    assert forwarded_env(environ) == {"AWS_ENDPOINT_URL": "http://minio:9000",
                                      "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "lab"}


def _files_containing(root: str, needle: bytes) -> list[str]:
    hits = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:  # sockets, vanished files
                continue
    return hits


def _checkpoint(folder: str) -> str:
    import torch

    from wbc_ray.classes import PAPER_CLASSES
    from wbc_ray.models import build_model
    from wbc_ray.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = build_model("paper_cnn", num_classes=len(PAPER_CLASSES), hidden=[32], dropout=0.2)
    meta = CheckpointMeta.for_model("paper_cnn", PAPER_CLASSES, {"hidden": [32], "dropout": 0.2})
    return save_checkpoint(os.path.join(folder, "best"), model, meta)


@pytest.mark.slow
def test_s3_scoring_writes_the_secret_nowhere(s3_server, short_tmp):
    """A real `wbc-ray score` from and to moto's S3 with a sentinel secret key: the scores
    come out, and the secret is in neither the console, the outputs, nor Ray's temp dir."""
    from wbc_ray.data.synthetic import make_archive

    sentinel = f"SENTINEL{uuid.uuid4().hex}"
    fs = make_bucket(s3_server, "lab")
    archive = make_archive(os.path.join(short_tmp, "archive"),
                           {"slide-1": {"NEUTROPHIL": 6, "LYMPHOCYTE": 4}})
    fs.put(archive.rstrip("/") + "/", "lab/archive/", recursive=True)
    ckpt = _checkpoint(os.path.join(short_tmp, "ckpt"))
    env = _driver_env(short_tmp, AWS_SECRET_ACCESS_KEY=sentinel, AWS_ACCESS_KEY_ID="testing")
    out = subprocess.run([str(BIN / "wbc-ray"), "score", "--checkpoint", ckpt,
                          "--input", "s3://lab/archive", "--output", "s3://lab/scores",
                          "--min-cells", "5", "--run-date", "2031-01-01", "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    summary = json.loads(out.stdout.decode()[out.stdout.decode().index("{"):])
    assert summary["status"] == "ok"
    outputs = fs.find("lab/scores")
    assert any(p.endswith(".parquet") for p in outputs), outputs

    needle = sentinel.encode()
    assert needle not in out.stdout and needle not in out.stderr
    assert [p for p in outputs if needle in fs.cat_file(p)] == []
    ray_tmp = os.path.join(short_tmp, "ray")
    assert any(Path(ray_tmp).glob("session_*/logs/runtime_env_agent.log")), "no Ray session?"
    assert _files_containing(ray_tmp, needle) == []
    assert _files_containing(env["WBC_RAY_RUNTIME_DIR"], needle) == []
    assert _files_containing(str(REPO / "mlruns"), needle) == []  # if tracking ever writes there


# ---------------------------------------------------------------- processes

DRIVER = """
import time, ray
from wbc_ray.ray_session import init_ray
init_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())  # a worker process exists too
print("ready", flush=True)
time.sleep(600)
"""


def _start_driver(tmp: str):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=_driver_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "ready":
            owner = _owner_tag(proc.pid)
            procs = owned_processes(owner)
            names = {p.name() for p in procs}
            assert {"raylet", "gcs_server"} <= names, names
            return proc, owner, procs
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"driver did not start: {proc.stdout.read()[-2000:]}")


def _gone(procs, wait_s: float) -> list:
    deadline = time.monotonic() + wait_s
    alive = procs
    while time.monotonic() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != "zombie"]
        if not alive:
            break
        time.sleep(0.5)
    return alive


def _fake_ray_process(owner: str) -> subprocess.Popen:
    """A process that carries ``owner``'s tag, like the ``ray::DashboardAgent`` and
    ``ray::RuntimeEnvAgent`` that issue 18 found alive 35 s after their driver's SIGKILL."""
    env = {**os.environ, OWNER_ENV: owner}
    return subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)


def test_cleanup_kills_only_the_processes_of_dead_drivers(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_RAY_RUNTIME_DIR", str(tmp_path))
    records = tmp_path / "ray-sessions"
    records.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    dead_owner, live_owner = f"{dead}-12345.00", _owner_tag(os.getpid())
    for owner in (dead_owner, live_owner):
        (records / f"{owner}.json").write_text("{}")
    orphan, ours = _fake_ray_process(dead_owner), _fake_ray_process(live_owner)
    try:
        time.sleep(0.2)  # let exec() finish, so the environment is the child's own
        assert cleanup_stale_sessions() == [orphan.pid]
        assert orphan.wait(timeout=10) is not None
        assert ours.poll() is None  # a live driver's process is left alone
        assert sorted(os.listdir(records)) == [f"{live_owner}.json"]
    finally:
        for p in (orphan, ours):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_next_start_after_a_sigkilled_driver_leaves_no_ray_process(short_tmp, monkeypatch):
    proc, owner, procs = _start_driver(short_tmp)
    proc.kill()
    proc.wait(timeout=30)
    monkeypatch.setenv("WBC_RAY_RUNTIME_DIR", os.path.join(short_tmp, "run"))
    records = os.path.join(short_tmp, "run", "ray-sessions")
    assert os.listdir(records) == [f"{owner}.json"]

    cleanup_stale_sessions()  # what init_ray does before it starts a local Ray
    assert _gone(procs, 5) == []
    assert owned_processes(owner) == []
    assert os.listdir(records) == []


@pytest.mark.slow
def test_sigterm_shuts_ray_down(short_tmp):
    proc, owner, procs = _start_driver(short_tmp)
    proc.send_signal(signal.SIGTERM)
    # SystemExit(143), so atexit hooks run (not abseil's "*** SIGTERM received" + SIGABRT)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stdout.read()[-2000:]
    assert _gone(procs, 10) == [], [p.name() for p in procs if p.is_running()]
    assert owned_processes(owner) == []
    assert os.listdir(os.path.join(short_tmp, "run", "ray-sessions")) == []
