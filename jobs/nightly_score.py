"""Nightly scoring as a Ray job: the same options as ``wbc-ray score``.

    ray job submit --working-dir . -- python jobs/nightly_score.py \\
        --checkpoint s3://models/wbc/best --input s3://archive/slides \\
        --output s3://results/wbc

Prints the run summary as JSON. Exit status 0 when the run reconciles, 1 when it does not
(or fails), 2 for bad arguments. Rerunning a night is safe: only unscored inputs are scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from wbc_ray.config import ScoreConfig


def parse_args(argv: list[str] | None = None) -> tuple[ScoreConfig, bool]:
    """Command-line options -> (:class:`ScoreConfig`, show a progress bar)."""
    d = ScoreConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="Checkpoint directory (local or s3://).")
    p.add_argument("--input", required=True,
                   help="Archive: <sample>/**/images, a manifest, or fields with VOC boxes.")
    p.add_argument("--output", required=True, help="Root for cells/, samples/, quarantine/.")
    p.add_argument("--rescore", action="store_true", help="Score everything again.")
    p.add_argument("--review-threshold", type=float, default=d.review_threshold,
                   help="Confidence below which a cell needs review.")
    p.add_argument("--min-cells", type=int, default=d.min_cells,
                   help="Fewer cells in a sample: insufficient_count.")
    p.add_argument("--run-date", default=None, help="Night partition YYYY-MM-DD (default: "
                   "today, UTC).")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="Model batch size.")
    p.add_argument("--actors", type=int, default=None,
                   help="Model actors (default: one per GPU, else one per CPU).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar (batch logs).")
    a = p.parse_args(argv)
    cfg = ScoreConfig(checkpoint=a.checkpoint, input=a.input, output=a.output,
                      review_threshold=a.review_threshold, min_cells=a.min_cells,
                      batch_size=a.batch_size, rescore=a.rescore, run_date=a.run_date,
                      actors=a.actors)
    return cfg, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    from wbc_ray.ray_session import init_ray
    from wbc_ray.scoring.pipeline import score

    cfg, progress = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    init_ray()
    try:
        summary = score(cfg, progress=progress)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"scoring failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
