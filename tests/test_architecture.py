"""The layers only point down and no two parts of the package import each other.

The contract lives in pyproject.toml ([tool.importlinter]); this runs it in CI, plus a cycle
check between the package's direct children, so an upward import or a loop fails the build.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_no_import_cycle_between_parts_of_the_package():
    graph = grimp.build_graph("wbc_ray")
    parts = sorted(m for m in graph.find_children("wbc_ray"))
    cycles = [(a, b) for a, b in itertools.combinations(parts, 2)
              if graph.chain_exists(a, b, as_packages=True)
              and graph.chain_exists(b, a, as_packages=True)]
    assert not cycles, cycles


def test_the_contract_can_fail(tmp_path):
    """An upward import (models -> training) in a copy of the package breaks the contract."""
    import os
    import shutil

    shutil.copytree(ROOT / "wbc_ray", tmp_path / "wbc_ray")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "wbc_ray" / "models" / "registry.py", "a") as f:
        f.write("\nimport wbc_ray.training.loop  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert res.returncode != 0
    assert "wbc_ray.models.registry -> wbc_ray.training.loop" in res.stdout
