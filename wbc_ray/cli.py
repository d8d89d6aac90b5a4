"""The `wbc-ray` command line. Each command parses options and calls one library function.

Every command follows one path: build the config (the config types validate values and
ranges), run the I/O checks of ``workflows.preflight`` (seconds, no Ray), start Ray once,
call the workflow. Expected failures end in one line ``error: ...`` and exit status 2;
``--verbose`` (or ``WBC_RAY_VERBOSE=1``) adds the traceback and Ray's own log lines.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from wbc_ray.config import PRECISIONS, SPLITS, TrackingConfig, load_run_config
from wbc_ray.models import list_models

app = typer.Typer(help="Distributed white-blood-cell image classification on Ray "
                       "(Asghar et al., 2022).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

TRAIN_SPLITS = tuple(s for s in SPLITS if s != "all")
# Choices as Literal types, so `--help` lists them (the model list comes from the registry).
ModelName = Literal[tuple(list_models())]
TrainSplit = Literal[TRAIN_SPLITS]
AnySplit = Literal[tuple(SPLITS)]
PrecisionName = Literal[tuple(PRECISIONS)]

Data = Annotated[str | None, typer.Option("--data", help="Image folder or manifest (CSV/Parquet): "
                                          "local path or s3://bucket/prefix.")]
Config = Annotated[str | None, typer.Option("--config", help="YAML run config (path or URI); "
                                            "flags override it.")]
Split = Annotated[TrainSplit | None, typer.Option("--split",
                                           help="paper: stratified random 70/20/10 (leaky on "
                                                "Kaggle); official: TRAIN/TEST folders; "
                                                "grouped: by source original/patient.")]
Classes = Annotated[str | None, typer.Option("--classes", help="paper (4 types), lisc (5, with "
                                             "BASOPHIL) or a comma list.")]
Groups = Annotated[str | None, typer.Option("--groups", help="CSV mapping image path -> group "
                                            "(source original, patient) for --split grouped, "
                                            "or near-duplicates (group near-identical images).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks and Ray's own log "
                                       "lines (also WBC_RAY_VERBOSE=1).")]
Checkpoint = Annotated[str, typer.Option(help="Run directory, checkpoint directory or its "
                                         "model.safetensors (local or s3://).")]
TrackingUri = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI "
                                                 "(default: MLFLOW_TRACKING_URI, else a local "
                                                 "store beside the run: <output>/../mlruns).")]
Track = Annotated[bool | None, typer.Option("--track/--no-track", help="Log the run to MLflow "
                                            "(default: on; config: tracking.enabled).")]


def _verbose(flag: bool) -> bool:
    return flag or os.environ.get("WBC_RAY_VERBOSE", "") not in ("", "0")


def _run(verbose: bool, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the console set up; expected failures become one ``error:`` line."""
    verbose = _verbose(verbose)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return fn()
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        if verbose:
            traceback.print_exc()
        typer.secho(f"error: {_message(e)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _message(e: BaseException) -> str:
    """The user's cause of ``e``: Ray wraps errors raised in workers and trainers."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or (e.__cause__ if type(e).__module__.startswith(
            "ray") else None)
        if not isinstance(inner, BaseException):
            break
        e = inner
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _start_ray(num_cpus: int | None = None, verbose: bool = False) -> None:
    from wbc_ray.ray_session import init_ray

    init_ray(num_cpus, verbose=_verbose(verbose))


@app.command()
def train(
    *,
    data: Data = None,
    model: Annotated[ModelName | None, typer.Option(help="Model (see `wbc-ray models`).")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPU workers (DDP over NCCL).")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers (gloo) when --gpus is 0.")] = None,
    cpus_per_worker: Annotated[int | None, typer.Option(help="CPUs per worker.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (paper: 150).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per worker.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (paper: 1e-4).")] = None,
    precision: Annotated[PrecisionName | None, typer.Option(help="Autocast precision.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience.")] = None,
    split: Split = None,
    classes: Classes = None,
    groups: Groups = None,
    seed: Annotated[int | None, typer.Option(help="Split and training seed.")] = None,
    limit_per_class: Annotated[int | None, typer.Option(help="Use at most N images per class.")] = None,
    cache: Annotated[str | None, typer.Option(help="URI for the decoded-image cache.")] = None,
    output: Annotated[str | None, typer.Option(help="Runs root: local path or s3://.")] = None,
    name: Annotated[str | None, typer.Option(help="Run name; rerun a name to resume it.")] = None,
    tracking_uri: TrackingUri = None,
    track: Track = None,
    config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Train a model with Ray Train; keeps the weights with the best validation loss."""
    overrides = {
        "data": {"data": data, "split": split, "classes": classes, "groups": groups,
                 "seed": seed, "limit_per_class": limit_per_class, "cache": cache},
        "model": {"name": model},
        "train": {"gpus": gpus, "workers": workers, "cpus_per_worker": cpus_per_worker,
                  "epochs": epochs, "batch_size": batch_size, "lr": lr, "precision": precision,
                  "patience": patience, "output": output, "name": name, "seed": seed},
        "tracking": {"uri": tracking_uri, "enabled": track},
    }

    def go():
        from wbc_ray import tracking
        from wbc_ray.workflows import preflight
        from wbc_ray.workflows import train as workflow

        cfg = load_run_config(config, overrides)
        preflight.check_train(cfg)
        tracking.preflight(cfg.tracking)
        _start_ray(verbose=verbose)
        return workflow.train(cfg)

    outcome = _run(verbose, go)
    r = outcome.result
    typer.echo(f"run: {r.run_dir}\nbest checkpoint: {r.best_checkpoint}\n"
               f"epochs: {len(r.history)}  best val loss: {min(h['val_loss'] for h in r.history):.4f}")
    if outcome.test_metrics:
        typer.echo(f"test accuracy: {outcome.test_metrics['accuracy']:.4f}  "
                   f"macro F1: {outcome.test_metrics['macro']['f1']:.4f}")


@app.command()
def cv(
    *,
    data: Data = None,
    model: Annotated[ModelName | None, typer.Option(help="Model (see `wbc-ray models`).")] = None,
    folds: Annotated[int | None, typer.Option(help="Number of folds (k; default: the "
                                              "config's data.folds, else 5).")] = None,
    split: Annotated[Literal["paper", "grouped"] | None, typer.Option(
        help="paper: stratified folds; grouped: group-disjoint stratified folds.")] = None,
    classes: Classes = None,
    groups: Groups = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold.")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers (when no GPUs).")] = None,
    seed: Annotated[int | None, typer.Option(help="Fold and training seed.")] = None,
    output: Annotated[str | None, typer.Option(help="Runs root: local path or s3://.")] = None,
    name: Annotated[str | None, typer.Option(help="CV name; folds run as <name>-fold<k> and "
                                             "resume.")] = None,
    config: Config = None,
    verbose: Verbose = False,
) -> None:
    """k-fold cross-validation: one training run per fold, pooled test metrics (cv.md)."""
    overrides = {
        "data": {"data": data, "split": split, "classes": classes, "groups": groups,
                 "seed": seed, "folds": folds},
        "model": {"name": model},
        "train": {"epochs": epochs, "workers": workers, "output": output, "name": name,
                  "seed": seed},
    }

    def go():
        from wbc_ray.workflows import cv as workflow
        from wbc_ray.workflows import preflight

        cfg = load_run_config(config, overrides)
        preflight.check_train(cfg)
        _start_ray(verbose=verbose)
        return workflow.cross_validate(cfg)

    outcome = _run(verbose, go)
    s = outcome.summary
    typer.echo(f"{s['folds']}-fold CV: pooled accuracy {s['accuracy']:.4f}  macro F1 "
               f"{s['macro_f1']:.4f}  per fold {s['fold_accuracy_mean']:.4f} "
               f"+- {s['fold_accuracy_std']:.4f}\nsummary: {outcome.files['markdown']}")


@app.command()
def evaluate(
    *,
    checkpoint: Checkpoint,
    data: Annotated[str, typer.Option(help="Labelled image folder or manifest.")],
    split: Annotated[AnySplit, typer.Option(help="all: every image; paper | official | grouped: "
                                       "rebuild that split (seed from the checkpoint) and "
                                       "evaluate --part.")] = "all",
    part: Annotated[Literal["test", "val", "train"], typer.Option(
        help="The part of --split to evaluate.")] = "test",
    groups: Groups = None,
    output: Annotated[str, typer.Option(help="Where metrics.json, .md and .png go.")] = "runs/eval",
    tracking_uri: TrackingUri = None,
    track: Track = None,
    verbose: Verbose = False,
) -> None:
    """Evaluate a checkpoint: metrics.json, paper-style Markdown tables, confusion matrix PNG."""
    given = {k: v for k, v in (("uri", tracking_uri), ("enabled", track)) if v is not None}

    def go():
        from wbc_ray import tracking
        from wbc_ray.workflows import evaluate as workflow
        from wbc_ray.workflows import preflight

        resolved = preflight.check_evaluate(checkpoint, data, output)
        tracking.preflight(TrackingConfig(**given))
        _start_ray(verbose=verbose)
        # only what was given: the library's defaults apply otherwise
        kw = {"tracking_config": TrackingConfig(**given)} if given else {}
        return workflow.evaluate(resolved, data, split, part, groups, output, **kw)

    m = _run(verbose, go)
    typer.echo(f"accuracy {m['accuracy']:.4f}  macro F1 {m['macro']['f1']:.4f}  "
               f"n={m['n']}  -> {output}/metrics.json")


@app.command()
def tune(
    *,
    data: Data = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Epochs per trial at most (ASHA).")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial.")] = None,
    workers_per_trial: Annotated[int | None, typer.Option(help="CPU workers per trial.")] = None,
    searcher: Annotated[Literal["random", "grid", "optuna"] | None, typer.Option(
        help="Search algorithm.")] = None,
    split: Split = None,
    groups: Groups = None,
    limit_per_class: Annotated[int | None, typer.Option(help="Use at most N images per class.")] = None,
    output: Annotated[str | None, typer.Option(help="Sweep output: local path or s3://.")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name; rerun to resume.")] = None,
    tracking_uri: TrackingUri = None,
    track: Track = None,
    config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Search hyperparameters around the paper's settings with Ray Tune (ASHA, resumable)."""
    overrides = {
        "data": {"data": data, "split": split, "groups": groups, "limit_per_class": limit_per_class},
        "tune": {"trials": trials, "max_epochs": max_epochs, "gpus_per_trial": gpus_per_trial,
                 "workers_per_trial": workers_per_trial, "searcher": searcher, "output": output,
                 "name": name},
        "tracking": {"uri": tracking_uri, "enabled": track},
    }

    def go():
        from wbc_ray import tracking
        from wbc_ray.tuning import sweep
        from wbc_ray.tuning.resources import local_cpus

        cfg = load_run_config(config, overrides)
        if cfg.data.data is not None:
            from wbc_ray import storage

            storage.check_readable(cfg.data.data)
        tracking.preflight(cfg.tracking)
        _start_ray(local_cpus(cfg.tune), verbose)  # logical CPUs: a trial's driver, workers and Data
        return sweep.run_sweep(cfg)

    typer.echo(str(_run(verbose, go)))


@app.command()
def score(
    *,
    checkpoint: Checkpoint,
    input: Annotated[str, typer.Option("--input", help="Archive: <sample>/**/images, a manifest, "
                                       "or fields with Pascal-VOC boxes.")],
    output: Annotated[str, typer.Option(help="Output root for cells/, samples/, quarantine/.")],
    rescore: Annotated[bool, typer.Option(help="Score everything again.")] = False,
    review_threshold: Annotated[float | None, typer.Option(help="Confidence below which a cell "
                                                           "needs review.")] = None,
    min_cells: Annotated[int | None, typer.Option(help="Fewer cells: insufficient count.")] = None,
    run_date: Annotated[str | None, typer.Option(help="Night partition (YYYY-MM-DD).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Model batch size.")] = None,
    actors: Annotated[int | None, typer.Option(help="Model actors (default: one per GPU, "
                                               "else one per CPU).")] = None,
    runtime: Annotated[Literal["torch", "onnx"] | None, typer.Option(
        help="Model runtime in the actors.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Score an archive: per-cell labels and per-sample differential counts to Parquet."""
    overrides = {"score": {"checkpoint": checkpoint, "input": input, "output": output,
                           "rescore": rescore or None, "review_threshold": review_threshold,
                           "min_cells": min_cells, "run_date": run_date,
                           "batch_size": batch_size, "actors": actors, "runtime": runtime}}

    def go():
        from wbc_ray.scoring import pipeline
        from wbc_ray.workflows import preflight

        cfg = preflight.check_score(load_run_config(config, overrides).score)
        _start_ray(verbose=verbose)
        return pipeline.score(cfg, progress=progress)

    summary = _run(verbose, go)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def demo(
    *,
    output: Annotated[Path, typer.Option(help="Where data, runs and scores go.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 6,
    per_class: Annotated[int, typer.Option(min=10, help="Synthetic images per class.")] = 120,
    verbose: Verbose = False,
) -> None:
    """Run everything on a synthetic set: generate, train, evaluate, score, summarise."""

    def go():
        from wbc_ray.workflows import demo as workflow

        _start_ray(4, verbose)  # logical CPUs: 2 train workers + Ray Data on 2 cores
        return workflow.run_demo(str(output), epochs=epochs, per_class=per_class,
                                 echo=typer.echo)

    _run(verbose, go)


@app.command()
def export(
    *,
    checkpoint: Checkpoint,
    output: Annotated[str, typer.Option(help="Model file to write (local or s3://).")] = "model.onnx",
    format: Annotated[Literal["onnx"], typer.Option("--format", help="Export format.")] = "onnx",
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    verbose: Verbose = False,
) -> None:
    """Export a checkpoint for serving: uint8 images in, probabilities out, the preprocessing
    spec in the model's metadata (checked with onnx.checker)."""

    def go():
        from wbc_ray.models import export as exporter
        from wbc_ray.models.checkpoint import resolve_checkpoint

        return exporter.export_onnx(resolve_checkpoint(checkpoint), output, opset=opset)

    typer.echo(f"wrote {_run(verbose, go)} ({format})")


@app.command()
def models() -> None:
    """List the registered models with their input size."""
    from wbc_ray.models import get_spec

    for n in list_models():
        s = get_spec(n)
        typer.echo(f"{n:18s} {s.input_size}x{s.input_size}  "
                   f"{'ImageNet-pretrained' if s.pretrained else 'from scratch'}  "
                   f"params: {', '.join(s.params)}")


@data_app.command("audit")
def data_audit(
    *,
    data: Annotated[str, typer.Option(help="Labelled image folder or manifest.")],
    split: Annotated[TrainSplit, typer.Option(help="Split to audit.")] = "paper",
    groups: Groups = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    output: Annotated[str | None, typer.Option(help="Write audit.json and audit.md here.")] = None,
    verbose: Verbose = False,
) -> None:
    """Near-duplicate / leakage report between splits (perceptual hashes, flip/rotation-proof)."""

    def go():
        from wbc_ray import storage
        from wbc_ray.workflows import audit

        storage.check_readable(data)
        return audit.audit_split(data, split, groups, seed, output)

    typer.echo(_run(verbose, go).to_markdown())


# ---------------------------------------------------------------- review (issue 17)

review_app = typer.Typer(help="Review station: verify scored samples, sign them, export "
                              "corrections for training.")
app.add_typer(review_app, name="review")
Scored = Annotated[str | None, typer.Option("--scored", help="Scoring output root (local or "
                                            "s3://), as written by `wbc-ray score --output`.")]
Fingerprint = Annotated[str | None, typer.Option(help="Checkpoint fingerprint to review "
                                                 "(default: the newest run's).")]


@review_app.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    *,
    scored: Scored = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8765,
    config: Config = None,
    fingerprint: Fingerprint = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the review pages: worklist, per-class galleries, sign-off (reference ranges from --config)."""
    if ctx.invoked_subcommand is not None:
        return
    if not scored:
        raise typer.BadParameter("--scored is required", param_hint="--scored")
    from wbc_ray.review.run import serve

    _run(verbose, lambda: serve(scored, host=host, port=port, config=config,
                                fingerprint=fingerprint, echo=typer.echo))


@review_app.command("export")
def review_export(
    *,
    scored: Annotated[str, typer.Option("--scored", help="Scoring output root (local or s3://).")],
    output: Annotated[str, typer.Option(help="Manifest to write (.parquet or .csv) for `wbc-ray train --data`.")],
    config: Config = None,
    fingerprint: Fingerprint = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write the reviewed labels of every signed sample as a training manifest (group = sample)."""
    from wbc_ray.review.run import export

    typer.echo(json.dumps(_run(verbose, lambda: export(scored, output, config=config,
                                                       fingerprint=fingerprint)), indent=2))


if __name__ == "__main__":
    app()
