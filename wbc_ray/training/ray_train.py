"""Ray Train glue: datasets, workers, checkpoints and reports around the plain loop."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from wbc_ray import storage
from wbc_ray.config import RunConfig, from_dict, to_dict
from wbc_ray.console import say
from wbc_ray.data.prepare import PreparedData
from wbc_ray.models import build_model, get_spec
from wbc_ray.models.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from wbc_ray.models.inputs import Normalise
from wbc_ray.training.augmentation import batch_transform
from wbc_ray.training.loop import (
    EarlyStopping,
    evaluate,
    lr_factor,
    make_optimizer,
    train_one_epoch,
)

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 1024  # rows (~30 MB of 100x100 images) mixed locally on top of block shuffling


def model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The model's declared keyword arguments, taken from ``cfg.model`` (the registry decides)."""
    m = cfg.model
    values = {k: getattr(m, k) for k in get_spec(m.name).params}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _all_reduce(values: list[float]) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the plain loop plus reports and checkpoints."""
    cfg = from_dict(RunConfig, config["run"])
    t, ctx = cfg.train, ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(t.seed + rank)
    device = ray.train.torch.get_device()
    meta = CheckpointMeta.for_model(cfg.model.name, config["classes"], model_kwargs(cfg),
                                    input_size=cfg.model.input_size,
                                    preprocess=config["run"]["preprocess"], config=config["run"],
                                    data_fingerprint=config["fingerprint"])
    model = build_model(cfg.model.name, len(meta.classes), **model_kwargs(cfg))
    state, history = None, []
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            model, _ = load_checkpoint(d)
            state = load_train_state(d)
        history = json.loads(state["history"])
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(t.optimizer, model.parameters(), t.lr, t.weight_decay)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    early = EarlyStopping(t.patience, *(state["early"] if state else (float("inf"), 0)))
    scaler = torch.amp.GradScaler() if t.precision == "fp16" else None
    norm = Normalise(meta.mean, meta.std, t.channels_last).to(device)
    train_shard, val_shard = (ray.train.get_dataset_shard(s) for s in ("train", "val"))
    hooks: TrainHooks = config.get("hooks") or TrainHooks()
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    steps = max(1, math.ceil(config["train_rows"] / ctx.get_world_size() / t.batch_size))
    transform = batch_transform(t, seed=t.seed * 7919 + rank)
    for epoch in range(len(history), t.epochs):
        batches = train_shard.iter_torch_batches(batch_size=t.batch_size, drop_last=False,
                                                 local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                                 local_shuffle_seed=t.seed * 1000 + epoch)

        def set_lr(i: int, epoch: int = epoch) -> None:
            f = lr_factor(epoch + i / steps, t.epochs, t.schedule, t.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = t.lr * f

        tr = train_one_epoch(model, batches, optimizer, norm, device, t.precision, t.augment,
                             loss_fn=loss_fn, scaler=scaler, before_step=set_lr,
                             transform=transform)
        loss_sum, correct, n, secs = _all_reduce(
            [tr["loss"] * tr["images"], tr["acc"] * tr["images"], tr["images"], tr["seconds"]])
        va = evaluate(model, val_shard.iter_torch_batches(batch_size=256), norm, device,
                      t.precision)
        improved, stop = early.step(va["loss"])
        row = {"epoch": epoch, "train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1),
               "val_loss": va["loss"], "val_acc": va["acc"], "images": int(n),
               "images_per_s": n / (secs / ctx.get_world_size()) if secs else 0.0,
               "lr": optimizer.param_groups[0]["lr"],  # at the epoch's last step
               "best_val_loss": early.best, "improved": improved}
        if hooks.record_nodes:  # which node each rank ran on (multi-node checks)
            row["worker_nodes"] = _gather_nodes(ctx)
        history.append(row)
        if rank == 0:
            _progress(row, t.epochs, secs / ctx.get_world_size())
        _report(model, optimizer, meta, row, history, early, config["run_dir"], rank, improved)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, rank)
        if stop:
            break


def _gather_nodes(ctx) -> list[dict]:
    import socket

    me = {"rank": ctx.get_world_rank(), "node_id": ray.get_runtime_context().get_node_id(),
          "host": socket.gethostname()}
    if not torch.distributed.is_initialized():
        return [me]
    out: list = [None] * ctx.get_world_size()
    torch.distributed.all_gather_object(out, me)
    return out


def _progress(row: dict, epochs: int, epoch_s: float) -> None:
    eta = (epochs - row["epoch"] - 1) * epoch_s
    say(f"epoch {row['epoch'] + 1}/{epochs}  train loss {row['train_loss']:.4f} "
          f"acc {row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}  "
          f"{row['images_per_s']:.0f} img/s  ETA {eta / 60:.1f} min"
          f"{'  *best*' if row['improved'] else ''}")


def _report(model, optimizer, meta, row, history, early, run_dir, rank, improved) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint and keeps the best."""
    epoch_meta = CheckpointMeta(**{**meta.__dict__, "epoch": row["epoch"],
                                   "metrics": {k: v for k, v in row.items()
                                               if isinstance(v, float)}})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            state = {"optimizer": optimizer.state_dict(), "history": json.dumps(history),
                     "early": (early.best, early.bad_epochs)}
            save_checkpoint(tmp, model, epoch_meta, train_state=state)
            if improved:
                save_checkpoint(storage.join(run_dir, "best"), model, epoch_meta)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(row, checkpoint=checkpoint)


@dataclass(frozen=True)
class TrainHooks:
    """Callbacks into the worker loop (tests inject faults here; Ray pickles them)."""

    on_epoch_end: Callable[[int, int], None] | None = None  # (epoch, rank), after the report
    record_nodes: bool = False  # add each rank's node to the history rows


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    best_checkpoint: str
    history: list[dict[str, Any]]
    counts: dict[str, int]
    seconds: float


def build_trainer(cfg: RunConfig, data: PreparedData, run_dir: str, name: str,
                  storage_path: str, callbacks=None, hooks: TrainHooks | None = None
                  ) -> TorchTrainer:
    """The TorchTrainer for ``cfg`` (shared by ``train`` and Tune trials)."""
    t = cfg.train
    use_gpu = t.gpus > 0
    scaling = ScalingConfig(num_workers=t.gpus if use_gpu else t.workers, use_gpu=use_gpu,
                            resources_per_worker={"CPU": t.cpus_per_worker,
                                                  **({"GPU": 1} if use_gpu else {})},
                            placement_strategy=t.placement)
    fs, path = storage.pyarrow_filesystem(storage_path)
    run_config = ray.train.RunConfig(
        name=name, storage_path=path, storage_filesystem=fs,
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=t.max_failures), callbacks=callbacks)
    loop_config = {"run": to_dict(cfg), "classes": list(data.classes),
                   "fingerprint": data.fingerprint, "run_dir": run_dir, "hooks": hooks,
                   "train_rows": data.counts["train"]}
    return TorchTrainer(worker_loop, train_loop_config=loop_config, scaling_config=scaling,
                        run_config=run_config,
                        # a new block order every epoch; rows were shuffled once before decoding
                        datasets={"train": data.datasets["train"].randomize_block_order(),
                                  "val": data.datasets["val"]},
                        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]))


def fit(cfg: RunConfig, data: PreparedData, run_dir: str, hooks: TrainHooks | None = None,
        callbacks: list | None = None) -> TrainResult:
    """Train under Ray Train; rerunning the same run directory resumes it. ``callbacks``:
    Ray Train ``UserCallback``s, run in the controller (e.g. experiment tracking)."""
    t0 = time.perf_counter()
    if data.counts["train"] == 0 or data.counts["val"] == 0:
        raise ValueError(f"empty train or validation split: {data.counts}")
    storage_path, name = run_dir.rstrip("/").rsplit("/", 1)
    trainer = build_trainer(cfg, data, run_dir, name, storage_path, callbacks=callbacks or None,
                            hooks=hooks)
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        history = json.loads(load_train_state(d)["history"])
    return TrainResult(run_dir, storage.join(run_dir, "best"), history, data.counts,
                       time.perf_counter() - t0)
