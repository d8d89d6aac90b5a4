"""A multi-node Ray cluster on one machine: training spread across nodes, then scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.config import load_run_config
from wbc_ray.data.synthetic import make_archive, make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    store = 300 * 1024**2  # three nodes share one machine's memory
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    c.add_node(num_cpus=2, object_store_memory=store)
    c.add_node(num_cpus=2, object_store_memory=store)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.mark.timeout(480)  # a resource request no node can meet hangs instead of failing
def test_two_worker_training_spreads_across_nodes_then_scores(cluster, tmp_path):
    import ray

    from wbc_ray.training.ray_train import TrainHooks
    from wbc_ray.workflows.train import train

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    data = make_dataset(str(tmp_path / "data"), per_class=12)
    cfg = load_run_config(None, {
        "data": {"data": data, "split": "paper"},
        "train": {"workers": 2, "cpus_per_worker": 1, "placement": "SPREAD", "epochs": 2,
                  "batch_size": 16,
                  "output": str(tmp_path / "runs"), "name": "multinode"},
    })
    outcome = train(cfg, evaluate_test=False, hooks=TrainHooks(record_nodes=True))
    nodes = {h["node_id"] for h in outcome.result.history[-1]["worker_nodes"]}
    assert len(nodes) == 2  # the two ranks ran on different nodes
    assert [h["epoch"] for h in outcome.result.history] == [0, 1]

    archive = make_archive(str(tmp_path / "archive"), {"S1": {"NEUTROPHIL": 3, "MONOCYTE": 2},
                                                        "S2": {"LYMPHOCYTE": 4}})
    # The nightly job script as its own driver joining the cluster through RAY_ADDRESS, as
    # `ray job submit` runs it on a head node. One model actor: it gets the CPUs of the
    # largest node (2), not the cluster's 5, which no node could give it (before that cap
    # this actor waited forever, and so did the test).
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "nightly_score.py"), "--checkpoint",
         outcome.result.best_checkpoint, "--input", archive, "--output",
         str(tmp_path / "scores"), "--min-cells", "1", "--actors", "1", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = "\n" + proc.stdout
    summary = json.loads(out[out.rindex("\n{\n") + 1:])  # the summary printed last
    assert summary["status"] == "ok" and summary["counts"]["cells_written"] == 9
    cells = pd.read_parquet(tmp_path / "scores" / "cells")
    assert sorted(cells["sample_id"].value_counts().items()) == [("S1", 5), ("S2", 4)]
    assert set(cells["label"]) <= set(PAPER_CLASSES)
    samples = pd.read_parquet(tmp_path / "scores" / "samples")
    totals = dict(zip(samples["sample_id"], samples["total_cells"], strict=True))
    assert totals == {"S1": 5, "S2": 4}
