"""Which split a sweep tunes on: ``grouped`` whenever groups are known.

Near-duplicate images on both sides of train/val reward memorising, so a sweep on a
leaky split selects for leakage.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from wbc_ray.config import DataConfig
from wbc_ray.data.sources import find_groups_file, is_manifest, read_table

log = logging.getLogger(__name__)


def has_groups(d: DataConfig) -> bool:
    """Whether a group per image is known (a groups CSV, or a manifest ``group`` column)."""
    if d.groups:
        return True
    if not d.data:
        return False
    if is_manifest(d.data):
        table = read_table(d.data)
        return "group" in table and bool(table["group"].notna().all())
    return find_groups_file(d.data) is not None


def tuning_data(d: DataConfig) -> DataConfig:
    """The split to tune on: ``grouped`` when groups are known, so no leak gets selected for."""
    if d.split == "all":
        raise ValueError("data.split 'all' puts every image in test; tuning needs train and "
                         "val (use paper, official or grouped)")
    if d.split == "grouped" or not d.data:
        return d
    if has_groups(d):
        if d.split == "paper":
            log.info("groups found for %s: tuning on the grouped split", d.data)
            return replace(d, split="grouped")
        return d  # official: validation is carved out of TRAIN by group
    log.warning("no groups for %s: tuning on the %r split. Near-duplicate images that cross "
                "train/val reward memorising, so the sweep may select for leakage; pass "
                "--groups CSV for a grouped split", d.data, d.split)
    return d
