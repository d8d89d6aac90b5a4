"""What a scoring run accounts for: the reconciliation and the run summary it writes.

Every run writes ``runs/<run_date>-<UTC timestamp>-<id>.json`` under the output root: its
counts, the reconciliation, and its resolved :class:`ScoreConfig` (``config``), also when it
failed (``status`` says how).
"""

from __future__ import annotations

import json
import time

import pandas as pd

from wbc_ray import __version__, storage
from wbc_ray.config import to_dict
from wbc_ray.scoring.inputs import KEY, Inputs
from wbc_ray.scoring.plan import Run
from wbc_ray.scoring.publish import read_state
from wbc_ray.scoring.publisher import Publisher


def reconcile(run: Run, inputs: Inputs, skipped: dict[str, int], publisher: Publisher,
              received: int, sent: int) -> dict:
    """Inputs seen == cells written + quarantined + already done, checked twice.

    Once from this run's counters, once by reading the outputs back: every input key must
    have a row for this checkpoint in ``cells/`` or ``quarantine/``, no key may appear twice
    in one night's cells, and every input sample must have a row in ``samples/``.
    """
    c = publisher.counts
    accounted = c["cells"] + c["quarantine"] + sum(skipped.values())
    after = read_state(run.layout, run.fingerprint)
    keys = pd.MultiIndex.from_frame(pd.concat([inputs.records[KEY], inputs.rejected[KEY]]))
    missing = keys[~keys.isin(after.done_keys())]
    no_row = sorted(set(inputs.sample_ids) - set(after.samples["sample_id"]))
    check = {
        "inputs_seen": inputs.seen,
        "accounted": accounted,
        "rows_sent": sent,
        "rows_received": received,
        "missing_in_outputs": len(missing),
        "duplicate_cells": after.duplicate_cells,
        "samples_without_row": len(no_row),
        "examples_missing": [list(k) for k in missing[:5]],
        "examples_samples_without_row": no_row[:5],
    }
    check["ok"] = bool(accounted == inputs.seen and received == sent and not len(missing)
                       and after.duplicate_cells == 0 and not no_row)
    return check


def summary(run: Run, inputs: Inputs, skipped: dict[str, int], publisher: Publisher,
            check: dict | None, t0: float, status: str) -> dict:
    """The run summary (``t0``: ``time.perf_counter()`` when the run began)."""
    c = publisher.counts
    seconds = time.perf_counter() - t0
    cfg = run.cfg
    return {
        "status": status,
        "run_date": run.run_date,
        "started_at": run.started.isoformat(),
        "seconds": round(seconds, 2),
        "checkpoint": cfg.checkpoint,
        "checkpoint_fingerprint": run.fingerprint,
        "model": run.meta.model,
        "classes": list(run.classes),
        "package_version": __version__,
        "input": cfg.input,
        "input_kind": inputs.kind,
        "output": cfg.output,
        "rescore": cfg.rescore,
        "runtime": cfg.runtime,
        "counts": {
            "inputs_seen": inputs.seen,
            "duplicate_rows_ignored": inputs.duplicates,
            **skipped,
            "cells_written": c["cells"],
            "quarantined": c["quarantine"],
            "samples_written": c["samples"],
            "samples_seen": len(inputs.sample_ids),
            "samples_without_cells": len(set(inputs.sample_ids) - publisher.with_cells),
        },
        "images_per_s": round((c["cells"] + c["quarantine"]) / seconds, 1) if seconds else None,
        "reconciliation": check,
        "config": to_dict(cfg),
    }


def write_summary(run: Run, record: dict) -> None:
    """Write ``record`` under ``runs/`` and add its URI as ``summary_uri``."""
    stamp = run.started.strftime("%Y%m%dT%H%M%SZ")
    uri = run.layout.run_summary(run.run_date, stamp)
    storage.write_text(uri, json.dumps(record, indent=2, default=str))
    record["summary_uri"] = uri
