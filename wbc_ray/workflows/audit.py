"""`wbc-ray data audit`: list a dataset, split it as training would, report leakage."""

from __future__ import annotations

import json

from wbc_ray import storage
from wbc_ray.config import DataConfig
from wbc_ray.data.audit import LEAKY_FRACTION, NEAR_COPY_THRESHOLD, AuditReport, audit
from wbc_ray.data.prepare import list_labelled, split_records


def audit_split(data: str, split: str = "paper", groups: str | None = None, seed: int = 0,
              output: str | None = None, *, classes: str = "paper",
              threshold: float = NEAR_COPY_THRESHOLD,
              leaky_fraction: float = LEAKY_FRACTION) -> AuditReport:
    """List ``data``, split it as training would, audit it; write audit.json/.md to ``output``.

    Groups come from ``groups`` or a ``source_originals.csv``/``groups.csv`` beside the data,
    exactly as in training, so the audit sees the split a run would use.
    """
    cfg = DataConfig(data=data, classes=classes, split=split, groups=groups, seed=seed)
    _, listing = list_labelled(cfg)
    records = split_records(cfg, listing)
    report = audit(records, threshold=threshold, leaky_fraction=leaky_fraction)
    if output:
        storage.write_text(storage.join(output, "audit.json"),
                           json.dumps(report.to_dict(), indent=1))
        storage.write_text(storage.join(output, "audit.md"), report.to_markdown())
    return report

