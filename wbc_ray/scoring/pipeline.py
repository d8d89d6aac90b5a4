"""Nightly scoring: an archive of cell images -> per-cell labels and per-sample differentials.

``score(cfg)`` is the whole job; the CLI, ``jobs/nightly_score.py`` and the demo start Ray
(:func:`wbc_ray.ray_session.init_ray`) and call it. The pieces:

- :mod:`.plan`: the checks before any Ray work, what is left to score, the actor layout and
  the decode -> predict stream (the predictor class is a parameter);
- :mod:`.publisher`: each sample published whole as soon as its last row arrives
  (quarantine, cells, differential), provenance, empty samples;
- :mod:`.reconcile`: every input scored or quarantined, and the run summary;
- :mod:`.publish`: the output layout and the state read back from it.

Only labels and probabilities reach the driver, never pixels, and Ray Data's streaming
executor bounds the images in flight, so memory does not grow with the archive.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import pandas as pd

from wbc_ray.config import ScoreConfig
from wbc_ray.scoring.inputs import read_inputs
from wbc_ray.scoring.plan import (
    Run,
    actor_resources,
    pending,
    plan_run,
    predicted_frames,
    predictor_class,
    split_rows,
)
from wbc_ray.scoring.publish import read_state
from wbc_ray.scoring.publisher import (
    Publisher,
    PublishHooks,
    publish_without_images,
    stale_samples,
)
from wbc_ray.scoring.reconcile import reconcile, summary, write_summary

log = logging.getLogger(__name__)

__all__ = ["score", "PublishHooks", "actor_resources", "stale_samples"]


def score(cfg: ScoreConfig, predictor: type | None = None, *, progress: bool = True,
          hooks: PublishHooks | None = None) -> dict:
    """Score ``cfg.input`` with ``cfg.checkpoint`` into ``cfg.output``; returns the run summary.

    ``predictor``: the ``map_batches`` class the model actors run (default: the one of
    ``cfg.runtime``, see :data:`~wbc_ray.scoring.plan.RUNTIMES`). ``hooks``: how publishing
    runs (tests). Incremental: inputs whose ``(sample_id, cell_id)`` already has a row for
    this checkpoint in ``cells/`` or ``quarantine/`` are skipped (``cfg.rescore`` scores them
    again). Raises before any Ray work when the checkpoint or the input is missing, and
    RuntimeError, after writing the summary, when inputs and outputs do not reconcile.
    Uses the Ray session already started (Ray Data starts a local one otherwise).
    """
    t0 = time.perf_counter()
    run = plan_run(cfg)
    predictor = predictor or predictor_class(run.cfg.runtime)
    inputs = read_inputs(run.cfg.input, exclude=run.cfg.output)
    state = read_state(run.layout, run.fingerprint)
    todo, rejects, skipped = pending(inputs, state, run.cfg.rescore)
    log.info("%s input: %d inputs in %d samples, %d to score, %d rejected, %d already done",
             inputs.kind, inputs.seen, len(inputs.sample_ids), len(todo), len(rejects),
             sum(skipped.values()))
    publisher = Publisher(run, state, inputs.sample_ids, hooks)
    try:
        with publisher:
            publish_without_images(publisher, inputs, todo, rejects, state)
            received = _stream(run, todo, rejects, publisher, predictor, progress)
    except BaseException as e:  # record what was published before the failure, then re-raise
        failed = summary(run, inputs, skipped, publisher, None, t0, status="failed")
        failed["error"] = f"{type(e).__name__}: {e}"
        try:
            write_summary(run, failed)
        except Exception:
            log.exception("could not write the summary of the failed run")
        raise
    check = reconcile(run, inputs, skipped, publisher, received, len(todo))
    record = summary(run, inputs, skipped, publisher, check, t0,
                     status="ok" if check["ok"] else "reconciliation_failed")
    write_summary(run, record)
    if not check["ok"]:
        raise RuntimeError(f"scoring run does not reconcile: {check}")
    return record


def _stream(run: Run, todo: pd.DataFrame, rejects: pd.DataFrame, publisher: Publisher,
            predictor: type, progress: bool) -> int:
    """Decode, predict and publish ``todo``; returns the number of rows that came back."""
    if todo.empty:
        return 0
    from tqdm.auto import tqdm

    rejects_of = dict(tuple(rejects.groupby("sample_id", sort=False)))
    expected = todo.groupby("sample_id").size().to_dict()
    tally: Counter[str] = Counter()
    with tqdm(total=len(todo), unit="img", desc=f"scoring {run.run_date}",
              disable=not progress) as bar:
        frames = _counted(predicted_frames(run, todo, predictor), tally, bar)
        for sid, rows in whole_samples(frames, expected):
            cells, bad = split_rows(rows)
            bad = pd.concat([bad, rejects_of.get(sid, bad.iloc[:0])], ignore_index=True)
            publisher.submit(sid, cells, bad)
    return tally["rows"]


def _counted(frames: Iterator[pd.DataFrame], tally: Counter, bar) -> Iterator[pd.DataFrame]:
    for frame in frames:
        tally["rows"] += len(frame)
        bar.update(len(frame))
        yield frame


def whole_samples(frames: Iterator[pd.DataFrame], expected: dict[str, int]
                  ) -> Iterator[tuple[str, pd.DataFrame]]:
    """Regroup streamed rows into whole samples: ``(sample_id, rows)`` as soon as all
    ``expected[sample_id]`` rows of a sample have arrived. A sample still short at the end
    is logged and never yielded (reconciliation then reports its inputs missing)."""
    buffers: dict[str, list[pd.DataFrame]] = defaultdict(list)
    got: Counter[str] = Counter()
    for frame in frames:
        for sid, part in frame.groupby("sample_id", sort=False):
            buffers[sid].append(part)
            got[sid] += len(part)
            if got[sid] == expected.get(sid):
                yield sid, pd.concat(buffers.pop(sid), ignore_index=True)
    if buffers:
        log.error("samples incomplete after the stream: %s",
                  {s: (got[s], expected.get(s)) for s in list(buffers)[:5]})
