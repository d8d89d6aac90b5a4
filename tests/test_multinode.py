"""A multi-node Ray cluster on one machine: training spread across nodes, then scoring."""

from __future__ import annotations

import pandas as pd
import pytest

from wbc_ray.config import ScoreConfig, load_run_config
from wbc_ray.data.synthetic import make_archive, make_dataset


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


def test_two_worker_training_spreads_across_nodes_then_scores(cluster, tmp_path):
    import ray

    from wbc_ray.scoring.pipeline import score
    from wbc_ray.training.run import train

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    data = make_dataset(str(tmp_path / "data"), per_class=12)
    cfg = load_run_config(None, {
        "data": {"data": data, "split": "paper"},
        # 2 CPUs per worker: no node but the two worker nodes can hold one
        "train": {"workers": 2, "cpus_per_worker": 2, "epochs": 2, "batch_size": 16,
                  "output": str(tmp_path / "runs"), "name": "multinode"},
    })
    outcome = train(cfg, evaluate_test=False, extra={"record_nodes": True})
    nodes = {h["node_id"] for h in outcome.result.history[-1]["worker_nodes"]}
    assert len(nodes) == 2  # the two ranks ran on different nodes
    assert [h["epoch"] for h in outcome.result.history] == [0, 1]

    archive = make_archive(str(tmp_path / "archive"), {"S1": {"NEUTROPHIL": 3, "MONOCYTE": 2},
                                                        "S2": {"LYMPHOCYTE": 4}})
    summary = score(ScoreConfig(checkpoint=outcome.result.best_checkpoint, input=archive,
                                output=str(tmp_path / "scores"), min_cells=1), progress=False)
    cells = pd.read_parquet(tmp_path / "scores" / "cells")
    assert len(cells) == 9 and set(cells["sample_id"]) == {"S1", "S2"}
    assert summary is not None
