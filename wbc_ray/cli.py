"""The `wbc-ray` command line. Each command parses options and calls one library function."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from wbc_ray.config import load_run_config

app = typer.Typer(help="Distributed white-blood-cell image classification on Ray "
                       "(Asghar et al., 2022).", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Data = Annotated[str | None, typer.Option("--data", help="Image folder or manifest (CSV/Parquet): "
                                          "local path or s3://bucket/prefix.")]
Config = Annotated[str | None, typer.Option("--config", help="YAML run config (path or URI); "
                                            "flags override it.")]
Split = Annotated[str | None, typer.Option("--split", help="paper | official | grouped.")]
Classes = Annotated[str | None, typer.Option("--classes", help="paper (4 types), lisc (5, with "
                                             "BASOPHIL) or a comma list.")]
Groups = Annotated[str | None, typer.Option("--groups", help="CSV mapping image path -> group "
                                            "(source original, patient) for --split grouped.")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    *,
    data: Data = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `wbc-ray models`).")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPU workers (DDP over NCCL).")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers (gloo) when --gpus is 0.")] = None,
    cpus_per_worker: Annotated[int | None, typer.Option(help="CPUs per worker.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (paper: 150).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per worker.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (paper: 1e-4).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience.")] = None,
    split: Split = None,
    classes: Classes = None,
    groups: Groups = None,
    seed: Annotated[int | None, typer.Option(help="Split and training seed.")] = None,
    limit_per_class: Annotated[int | None, typer.Option(help="Use at most N images per class.")] = None,
    cache: Annotated[str | None, typer.Option(help="URI for the decoded-image cache.")] = None,
    output: Annotated[str | None, typer.Option(help="Runs root: local path or s3://.")] = None,
    name: Annotated[str | None, typer.Option(help="Run name; rerun a name to resume it.")] = None,
    config: Config = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a model with Ray Train; keeps the weights with the best validation loss."""
    _setup_logging(verbose)
    overrides = {
        "data": {"data": data, "split": split, "classes": classes, "groups": groups,
                 "seed": seed, "limit_per_class": limit_per_class, "cache": cache},
        "model": {"name": model},
        "train": {"gpus": gpus, "workers": workers, "cpus_per_worker": cpus_per_worker,
                  "epochs": epochs, "batch_size": batch_size, "lr": lr, "precision": precision,
                  "patience": patience, "output": output, "name": name, "seed": seed},
    }
    from wbc_ray.training.run import train as run_train

    try:
        cfg = load_run_config(config, overrides)
        outcome = run_train(cfg)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
    r = outcome.result
    typer.echo(f"run: {r.run_dir}\nbest checkpoint: {r.best_checkpoint}\n"
               f"epochs: {len(r.history)}  best val loss: {min(h['val_loss'] for h in r.history):.4f}")
    if outcome.test_metrics:
        typer.echo(f"test accuracy: {outcome.test_metrics['accuracy']:.4f}  "
                   f"macro F1: {outcome.test_metrics['macro']['f1']:.4f}")


@app.command()
def evaluate(
    *,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory (local or s3://).")],
    data: Annotated[str, typer.Option(help="Labelled image folder or manifest.")],
    split: Annotated[str, typer.Option(help="all: every image; paper | official | grouped: "
                                       "rebuild that split (seed from the checkpoint) and "
                                       "evaluate --part.")] = "all",
    part: Annotated[str, typer.Option(help="test | val | train (with --split).")] = "test",
    groups: Groups = None,
    output: Annotated[str, typer.Option(help="Where metrics.json, .md and .png go.")] = "runs/eval",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Evaluate a checkpoint: metrics.json, paper-style Markdown tables, confusion matrix PNG."""
    _setup_logging(verbose)
    from wbc_ray.evaluation.run import evaluate_cli

    try:
        m = evaluate_cli(checkpoint, data, split, part, groups, output)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
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
    searcher: Annotated[str | None, typer.Option(help="random | grid | optuna.")] = None,
    split: Split = None,
    groups: Groups = None,
    limit_per_class: Annotated[int | None, typer.Option(help="Use at most N images per class.")] = None,
    output: Annotated[str | None, typer.Option(help="Sweep output: local path or s3://.")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name; rerun to resume.")] = None,
    config: Config = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Search hyperparameters around the paper's settings with Ray Tune (ASHA, resumable)."""
    _setup_logging(verbose)
    overrides = {
        "data": {"data": data, "split": split, "groups": groups, "limit_per_class": limit_per_class},
        "tune": {"trials": trials, "max_epochs": max_epochs, "gpus_per_trial": gpus_per_trial,
                 "workers_per_trial": workers_per_trial, "searcher": searcher, "output": output,
                 "name": name},
    }
    from wbc_ray.tuning.sweep import run_sweep

    try:
        result = run_sweep(load_run_config(config, overrides))
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as e:
        _fail(e)
    typer.echo(str(result))


@app.command()
def score(
    *,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory (local or s3://).")],
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
    config: Config = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score an archive: per-cell labels and per-sample differential counts to Parquet."""
    _setup_logging(verbose)
    overrides = {"score": {"checkpoint": checkpoint, "input": input, "output": output,
                           "rescore": rescore or None, "review_threshold": review_threshold,
                           "min_cells": min_cells, "run_date": run_date,
                           "batch_size": batch_size, "actors": actors}}
    from wbc_ray.ray_session import init_ray
    from wbc_ray.scoring.pipeline import score as run_score

    try:
        cfg = load_run_config(config, overrides).score
        init_ray()
        summary = run_score(cfg)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def demo(
    *,
    output: Annotated[Path, typer.Option(help="Where data, runs and scores go.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    per_class: Annotated[int, typer.Option(help="Synthetic images per class.")] = 120,
) -> None:
    """Run everything on a synthetic set: generate, train, evaluate, score, summarise."""
    _setup_logging(False)
    from wbc_ray.demo import run_demo

    run_demo(str(output), epochs=epochs, per_class=per_class, echo=typer.echo)


@app.command()
def models() -> None:
    """List the registered models with their input size."""
    from wbc_ray.models import get_spec, list_models

    for n in list_models():
        s = get_spec(n)
        typer.echo(f"{n:14s} {s.input_size}x{s.input_size}  "
                   f"{'ImageNet-pretrained' if s.pretrained else 'from scratch'}")


@data_app.command("audit")
def data_audit(
    *,
    data: Annotated[str, typer.Option(help="Labelled image folder or manifest.")],
    split: Annotated[str, typer.Option(help="Split to audit: paper | official | grouped.")] = "paper",
    groups: Groups = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    output: Annotated[str | None, typer.Option(help="Write audit.json and audit.md here.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Near-duplicate / leakage report between splits (perceptual hashes, flip/rotation-proof)."""
    _setup_logging(verbose)
    from wbc_ray.data.audit import audit_cli

    try:
        report = audit_cli(data, split, groups, seed, output)
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(report.to_markdown())


if __name__ == "__main__":
    app()
