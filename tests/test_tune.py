"""Tuning: the space schema, the sweep's derived settings, and real sweeps on synthetic data.

The Ray tests share one module-scoped Ray and one interrupted-then-resumed sweep of three
tiny trials (2 epochs, batch 16, one CPU worker, one trial at a time).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray
import yaml
from ray import tune

from wbc_ray.config import DataConfig, ModelConfig, RunConfig, TuneConfig, load_run_config
from wbc_ray.tuning import (
    DEFAULT_SPACE,
    SweepInterrupted,
    apply_params,
    resolve_space,
    run_sweep,
    validate_space,
)
from wbc_ray.tuning.ray_compat import RAY_VERSION, STOP_FILE, GracefulASHA, check_ray_version
from wbc_ray.tuning.report import trials_table, write_report
from wbc_ray.tuning.resources import local_cpus, max_concurrent
from wbc_ray.tuning.search import check_tune_config, count_trials, grid_size, to_tune
from wbc_ray.tuning.split import tuning_data
from wbc_ray.tuning.sweep import check_resume, sweep_dir_of

# --- the space: schema, validation, params -> RunConfig ---------------------------------


def test_default_space_is_valid_and_maps_into_a_copy_of_the_config():
    base = RunConfig()
    space = resolve_space({})
    assert space == DEFAULT_SPACE
    validate_space(space, base)
    params = {"lr": 3e-4, "dropout": 0.3, "batch_size": 64, "optimizer": "adamw",
              "weight_decay": 1e-4, "hidden": 128, "augment": False}
    cfg = apply_params(base, params)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.optimizer) == (3e-4, 64, "adamw")
    assert (cfg.train.weight_decay, cfg.train.augment) == (1e-4, False)
    assert (cfg.model.dropout, cfg.model.hidden) == (0.3, (128,))
    assert base == RunConfig()  # never mutated
    assert cfg.data == base.data and cfg.tune == base.tune


def test_space_yaml_overrides_drop_and_fix_parameters(tmp_path):
    path = tmp_path / "tune.yaml"
    # `1e-5` without a dot is a YAML string: the schema still reads it as a number.
    path.write_text("tune:\n"
                    "  space:\n"
                    "    lr: {loguniform: [1e-5, 1.0e-3]}\n"
                    "    batch_size: {grid: [16, 32]}\n"
                    "    hidden: {choice: [64, [128, 64]]}\n"
                    "    augment: null\n"
                    "    optimizer: adamw\n")
    cfg = load_run_config(str(path))
    space = resolve_space(cfg.tune.space)
    assert "augment" not in space and space["optimizer"] == "adamw"
    validate_space(space, cfg)
    lr = to_tune(space, "random")["lr"]
    assert (lr.lower, lr.upper) == (1e-5, 1e-3)
    assert apply_params(cfg, {"hidden": [128, 64]}).model.hidden == (128, 64)


@pytest.mark.parametrize(("space", "message"), [
    ({"lr": {"loguniform": [0, 1e-3]}}, "tune.space.lr: loguniform needs low > 0"),
    ({"lr": {"loguniform": [1e-3, 1e-5]}}, "tune.space.lr: loguniform needs low < high"),
    ({"lr": {"loguniform": [1e-5]}}, "tune.space.lr.loguniform: expected tuple[float, float]"),
    ({"lr": {"loguniform": ["fast", 1]}}, "tune.space.lr.loguniform: expected tuple"),
    ({"lr": {"loguniform": "fast"}}, "tune.space.lr.loguniform: expected tuple"),
    ({"lr": {"normal": [0, 1]}}, "tune.space.lr.normal: unknown key"),
    ({"lr": {"logunifrom": [0, 1]}}, "tune.space.lr.logunifrom: unknown key; did you mean "
                                     "loguniform?"),
    ({"lr": {"choice": 1e-4}}, "tune.space.lr.choice: expected list"),
    ({"lr": [1e-4, 1e-3]}, "tune.space.lr: a bare list is ambiguous"),
    ({"lr": {"choice": [1e-4], "grid": [1e-3]}}, "tune.space.lr: expected one of"),
    ({"batch_size": {"uniform": [16, 64]}}, "tune.space.batch_size: train.batch_size: expected "
                                            "int, got 40.0"),
    ({"batch_size": {"choice": [16, 0]}}, "tune.space.batch_size"),
    ({"dropout": {"choice": [0.2, 1.5]}}, "tune.space.dropout: model.dropout: must be in [0, 1)"),
    ({"optimizer": {"choice": ["adam", "lion"]}}, "tune.space.optimizer: train.optimizer"),
    ({"augment": {"choice": ["yes"]}}, "tune.space.augment: train.augment: expected bool"),
    ({"hidden": {"choice": [64, [0]]}}, "tune.space.hidden: model.hidden: must be widths >= 1"),
    ({"hidden": {"choice": []}}, "tune.space.hidden: choice needs a non-empty list"),
    ({"momentum": {"choice": [0.9]}}, "unknown parameter(s) ['momentum']"),
])
def test_space_errors_name_the_key(tmp_path, space, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space}}))
    cfg = load_run_config(str(path))
    with pytest.raises((ValueError, TypeError)) as e:
        validate_space(resolve_space(cfg.tune.space), cfg)
    assert message in str(e.value)


def _with_model(name: str) -> RunConfig:
    return RunConfig(model=ModelConfig(name=name))


def test_default_space_tunes_only_the_parameters_the_model_declares():
    baseline = _with_model("mobilenet_v2")
    space = resolve_space({}, baseline.model.name)
    assert "dropout" not in space and "hidden" not in space
    assert {"lr", "batch_size", "optimizer", "weight_decay", "augment"} <= set(space)
    validate_space(space, baseline)
    # efficientnet_lite0 declares dropout (its head) but has no dense widths to tune
    effnet = resolve_space({}, "efficientnet_lite0")
    assert "dropout" in effnet and "hidden" not in effnet
    assert resolve_space({}, "paper_cnn") == DEFAULT_SPACE


@pytest.mark.parametrize("key", ["dropout", "hidden"])
def test_a_model_parameter_the_model_does_not_take_names_key_and_model(tmp_path, key):
    path = tmp_path / "tune.yaml"
    value = DEFAULT_SPACE[key]["choice"][0]
    path.write_text(f"model: {{name: mobilenet_v2}}\n"
                    f"tune:\n  space:\n    {key}: {{choice: [{value}]}}\n")
    cfg = load_run_config(str(path))
    with pytest.raises(ValueError, match=rf"tune.space.{key}: model 'mobilenet_v2' does not "
                                         rf"take model.{key}"):
        validate_space(resolve_space(cfg.tune.space, cfg.model.name), cfg)
    # the sweep refuses it before it needs Ray or any data
    with pytest.raises(ValueError, match=rf"tune.space.{key}: model 'mobilenet_v2'"):
        run_sweep(cfg)
    # null drops it: nothing left that the model would ignore
    dropped = resolve_space({key: None}, cfg.model.name)
    validate_space(dropped, cfg)


def test_run_sweep_needs_ray_started_by_the_entry_point(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match=r"call wbc_ray.ray_session.init_ray\(\) first"):
        run_sweep(RunConfig())


def test_ray_workarounds_are_pinned_to_the_installed_ray():
    assert ray.__version__ == RAY_VERSION
    check_ray_version()
    with pytest.raises(RuntimeError, match=rf"Ray {RAY_VERSION} internals .* Ray 2.99.0 is "
                                           rf"installed"):
        check_ray_version("2.99.0")


def test_grid_searcher_enumerates_sets_and_rejects_ranges():
    space = {"optimizer": {"grid": ["adam", "adamw"]}, "hidden": {"choice": [64, 128]},
             "batch_size": 16}
    assert grid_size(space) == 4
    assert count_trials(TuneConfig(searcher="grid", trials=4), space) == 4
    with pytest.raises(ValueError, match="has 4 points but tune.trials is 3"):
        count_trials(TuneConfig(searcher="grid", trials=3), space)
    with pytest.raises(ValueError, match="tune.space.lr: the grid searcher cannot enumerate"):
        grid_size(DEFAULT_SPACE)
    assert to_tune(space, "grid")["hidden"] == {"grid_search": [64, 128]}
    assert to_tune(space, "random")["optimizer"].categories == ["adam", "adamw"]


def test_optuna_searcher_needs_optuna(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ValueError, match=r"needs the optuna package: pip install"):
        check_tune_config(TuneConfig(searcher="optuna"))
    check_tune_config(TuneConfig(searcher="random"))


@pytest.mark.parametrize(("tc", "resources", "expected"), [
    (TuneConfig(), {"CPU": 4}, 1),  # 1 CPU for Data, 2 per trial (driver + worker)
    (TuneConfig(), {"CPU": 16}, 6),  # (16 - 4) // 2
    (TuneConfig(trials=3), {"CPU": 64}, 3),  # never more than the trials
    (TuneConfig(workers_per_trial=2, cpus_per_worker=2), {"CPU": 16}, 2),  # (16 - 4) // 5
    (TuneConfig(gpus_per_trial=1), {"CPU": 16, "GPU": 2}, 2),  # GPUs bind first
    (TuneConfig(gpus_per_trial=2), {"CPU": 64, "GPU": 8}, 4),
    (TuneConfig(max_concurrent=3), {"CPU": 2}, 3),  # as given
    (TuneConfig(), {"CPU": 1}, 1),  # at least one
])
def test_concurrency_follows_cluster_resources(tc, resources, expected):
    assert max_concurrent(tc, tc.trials, resources) == expected


@pytest.mark.parametrize(("tc", "cores", "expected"), [
    (TuneConfig(), 2, 4),  # driver + worker + 2 for Ray Data: more logical CPUs than cores
    (TuneConfig(), 16, 16),  # the cores, when they are enough
    (TuneConfig(workers_per_trial=2, cpus_per_worker=2), 2, 7),
])
def test_local_ray_gets_one_trial_plus_data_cpus(tc, cores, expected):
    assert local_cpus(tc, cpu_count=cores) == expected


def test_resume_reports_changed_settings(tmp_path, caplog):
    caplog.set_level(logging.WARNING)  # an earlier module may have raised the root level
    cfg = load_run_config(None, {"tune": {"output": str(tmp_path), "name": "s"}})
    sweep_dir = sweep_dir_of(cfg.tune)
    assert check_resume(sweep_dir, cfg) == []  # nothing saved yet
    Path(sweep_dir).mkdir(parents=True)
    from wbc_ray.config import dump_yaml

    Path(sweep_dir, "config.yaml").write_text(dump_yaml(cfg))
    assert check_resume(sweep_dir, cfg) == []
    changed = replace(cfg, tune=replace(cfg.tune, trials=3),
                      train=replace(cfg.train, lr=3e-4))
    assert check_resume(sweep_dir, changed) == ["train.lr", "tune.trials"]
    assert "ignoring changes to train.lr, tune.trials" in caplog.text


def test_fractional_gpus_per_trial_is_rejected():
    with pytest.raises(ValueError, match="whole number of GPU workers"):
        check_tune_config(TuneConfig(gpus_per_trial=0.5))


def test_tuning_split_is_grouped_when_groups_are_known(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    data = tmp_path / "cells"
    data.mkdir()
    plain = DataConfig(data=str(data), split="paper")
    assert tuning_data(plain).split == "paper"
    assert "may select for leakage" in caplog.text
    (data / "groups.csv").write_text("path,best_original\n")
    assert tuning_data(plain).split == "grouped"
    assert tuning_data(replace(plain, split="official")).split == "official"
    with pytest.raises(ValueError, match="tuning needs train and val"):
        tuning_data(replace(plain, split="all"))


def test_asha_stop_marks_the_trial_instead_of_killing_it(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    kwargs = {"time_attr": "epochs_done", "max_t": 4, "grace_period": 1,
              "stop_last_trials": False}
    plain, graceful = ASHAScheduler(**kwargs), GracefulASHA(str(tmp_path), **kwargs)
    good, weak = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="weak")
    decisions = {}
    for name, sched in (("plain", plain), ("graceful", graceful)):
        sched.set_search_properties("val_loss", "min")
        for t in (good, weak):
            sched.on_trial_add(None, t)
        sched.on_trial_result(None, good, {"epochs_done": 1, "val_loss": 1.0})
        decisions[name] = sched.on_trial_result(None, weak, {"epochs_done": 1, "val_loss": 2.0})
    assert decisions == {"plain": "STOP", "graceful": "CONTINUE"}
    assert (tmp_path / "trial_weak" / STOP_FILE).exists()
    assert not (tmp_path / "trial_good").exists()


def _fake_result(tmp_path, name, params, val_losses, error=None):
    history = pd.DataFrame({"epoch": range(len(val_losses)), "val_loss": val_losses,
                            "val_acc": [0.5 + 0.1 * i for i in range(len(val_losses))]})
    return SimpleNamespace(path=str(tmp_path / "tune" / name), config=params, error=error,
                           metrics_dataframe=history if val_losses else None)


def test_outputs_pick_the_lowest_val_loss_and_keep_one_type_per_column(tmp_path):
    cfg = load_run_config(None, {"tune": {"space": {"hidden": {"choice": [64, [128, 64]]}},
                                          "max_epochs": 3}})
    keys = list(resolve_space(cfg.tune.space))
    base = {"lr": 1e-4, "dropout": 0.2, "batch_size": 32, "optimizer": "adam",
            "weight_decay": 0.0, "augment": True}
    grid = [_fake_result(tmp_path, "trial_a", {**base, "hidden": 64}, [1.2, 1.0, 1.1]),
            _fake_result(tmp_path, "trial_b", {**base, "hidden": [128, 64], "lr": 3e-4},
                         [1.1, 0.8]),
            _fake_result(tmp_path, "trial_c", {**base, "hidden": 64}, [], RuntimeError("x"))]
    trials = trials_table(grid, keys, str(tmp_path / "runs"), max_epochs=3)
    t = trials.table.set_index("trial")
    assert list(t["status"]) == ["done", "stopped", "error"]
    assert list(t["epochs_run"]) == [3, 2, 0]
    assert (t.loc["trial_a", "best_val_loss"], t.loc["trial_a", "best_epoch"]) == (1.0, 1)
    assert t.loc["trial_a", "best_val_acc"] == pytest.approx(0.6)
    assert list(t["hidden"]) == ["64", "[128, 64]", "64"]
    result = write_report(cfg, trials, str(tmp_path), resumed=False, seconds=1.0)
    assert result.best_trial == "trial_b"
    assert result.best_config.model.hidden == (128, 64) and result.best_config.train.lr == 3e-4
    assert pd.read_parquet(result.files["trials_parquet"])["hidden"].tolist() == list(t["hidden"])
    assert load_run_config(result.files["best_config"]) == result.best_config
    assert "best trial_b" in str(result)


def test_all_trials_failing_is_an_error(tmp_path):
    cfg = RunConfig()
    grid = [_fake_result(tmp_path, "trial_a", {}, [], ValueError("boom"))]
    trials = trials_table(grid, [], str(tmp_path / "runs"), max_epochs=3)
    with pytest.raises(RuntimeError, match="all 1 trials .* failed; first error: ValueError"):
        write_report(cfg, trials, str(tmp_path), resumed=False, seconds=1.0)


# --- real sweeps -----------------------------------------------------------------------


class Recorder(tune.Callback):
    """Logs trial starts/completions to a file; interrupts the sweep once; and, when
    ``stop_request`` exists, marks the next trial to start the way ASHA stops one.

    State lives in files, not on the object: Tune pickles its callbacks with the sweep and
    a resumed sweep runs the unpickled copy.
    """

    def __init__(self, log: Path, interrupt_marker: Path, stop_request: Path, runs_dir: str):
        self.log, self.interrupt_marker = str(log), str(interrupt_marker)
        self.stop_request, self.runs_dir = str(stop_request), runs_dir

    def _write(self, event: str, trial) -> None:
        with open(self.log, "a") as f:
            f.write(f"{event} {trial.trial_id}\n")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write("start", trial)
        if os.path.exists(self.stop_request):
            os.remove(self.stop_request)
            run_dir = Path(self.runs_dir, f"trial_{trial.trial_id}")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STOP_FILE).write_text("test\n")
            self._write("marked", trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write("complete", trial)
        if self.interrupt_marker and not os.path.exists(self.interrupt_marker):
            open(self.interrupt_marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)  # what Tune treats like Ctrl-C


def events(log: Path, kind: str, since: int = 0) -> list[str]:
    lines = log.read_text().splitlines()[since:] if log.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == kind]


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory) -> RunConfig:
    from wbc_ray.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tune")
    data = make_dataset(str(root / "data"), per_class=12)
    return load_run_config(None, {
        "data": {"data": data},
        "train": {"batch_size": 16, "epochs": 150},
        "tune": {"trials": 3, "max_epochs": 2, "grace_period": 1, "max_concurrent": 1,
                 "workers_per_trial": 1, "cpus_per_worker": 1, "output": str(root / "out"),
                 "name": "resume", "space": {"batch_size": 16}}})


@pytest.fixture(scope="module")
def resumed(ray_session, sweep_config, tmp_path_factory):
    """A 3-trial sweep interrupted after its first trial completes, then resumed."""
    work = tmp_path_factory.mktemp("events")
    log, stop_request = work / "events.log", work / "stop_next"
    runs = str(Path(sweep_config.tune.output, sweep_config.tune.name, "runs"))
    recorder = Recorder(log, work / "interrupted", stop_request, runs)
    with pytest.raises(SweepInterrupted, match="rerun the same command to resume"):
        run_sweep(sweep_config, callbacks=[recorder])
    first = {"completed": events(log, "complete"), "lines": len(log.read_text().splitlines())}
    stop_request.touch()  # the first trial of the resumed sweep gets stopped like ASHA does
    result = run_sweep(sweep_config)  # the same config: resumes
    return {"result": result, "log": log, "first": first}


def _leaked_cpus() -> float:
    """CPUs still held by placement groups (a stopped trial's workers, if leaked)."""
    import ray
    from ray.util import placement_group_table

    deadline = time.monotonic() + 30
    while True:
        held = sum(b.get("CPU", 0.0) for pg in placement_group_table().values()
                   if pg["state"] != "REMOVED" for b in pg["bundles"].values())
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(0.5)
        assert ray.is_initialized()


def test_interrupted_sweep_resumes_without_redoing_finished_trials(resumed):
    result, log, first = resumed["result"], resumed["log"], resumed["first"]
    assert len(first["completed"]) == 1
    done_before = first["completed"][0]
    started_after = events(log, "start", since=first["lines"])
    assert started_after, "the resumed sweep ran no trials"
    assert done_before not in started_after
    assert result.resumed
    table = result.trials
    assert len(table) == 3 and table["trial"].is_unique
    assert set(table["status"]) <= {"done", "stopped"}
    assert f"trial_{done_before}" in set(table["trial"])
    assert (table["epochs_run"] >= 1).all() and (table["epochs_run"] <= 2).all()


def test_a_stopped_trial_ends_cleanly_and_frees_its_workers(resumed):
    result, log = resumed["result"], resumed["log"]
    (marked,) = events(log, "marked")
    row = result.trials.set_index("trial").loc[f"trial_{marked}"]
    assert (row["status"], row["epochs_run"]) == ("stopped", 1)
    assert row["error"] is None
    assert _leaked_cpus() == 0


def test_sweep_writes_table_best_checkpoint_summary_and_plot(resumed):
    from wbc_ray.models.checkpoint import load_checkpoint

    result = resumed["result"]
    files = {k: Path(v) for k, v in result.files.items()}
    parquet, csv = pd.read_parquet(files["trials_parquet"]), pd.read_csv(files["trials_csv"])
    assert len(parquet) == len(csv) == 3
    for column in ("lr", "dropout", "optimizer", "weight_decay", "hidden", "augment",
                   "best_val_loss", "best_val_acc", "epochs_run", "status"):
        assert column in parquet
    best_row = parquet.loc[parquet["best_val_loss"].idxmin()]
    assert result.best_trial == best_row["trial"]
    assert result.best_checkpoint == files["best_checkpoint"].read_text().strip()
    assert result.best_checkpoint.endswith(f"runs/{result.best_trial}/best")
    model, meta = load_checkpoint(result.best_checkpoint)
    assert meta.metrics["val_loss"] == pytest.approx(best_row["best_val_loss"])
    assert meta.model_kwargs["hidden"] == [result.best_params["hidden"]]
    summary = json.loads(files["summary"].read_text())
    assert summary["best_checkpoint"] == result.best_checkpoint
    assert summary["best_params"] == result.best_params
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_config_round_trips_through_load_run_config(resumed, sweep_config):
    result = resumed["result"]
    loaded = load_run_config(result.files["best_config"])
    assert loaded == result.best_config
    p = result.best_params
    assert (loaded.train.lr, loaded.train.weight_decay) == (p["lr"], p["weight_decay"])
    assert (loaded.train.optimizer, loaded.train.augment) == (p["optimizer"], p["augment"])
    assert (loaded.model.dropout, loaded.model.hidden) == (p["dropout"], (p["hidden"],))
    # The rest is the input config: the full epoch budget, no trial run name to resume.
    assert loaded.train.epochs == sweep_config.train.epochs == 150
    assert loaded.train.name is None and loaded.tune == sweep_config.tune
    assert loaded.data == sweep_config.data


def test_rerunning_a_finished_sweep_trains_nothing(resumed, sweep_config):
    log, lines = resumed["log"], len(resumed["log"].read_text().splitlines())
    again = run_sweep(sweep_config)
    assert events(log, "start", since=lines) == []
    assert again.best_trial == resumed["result"].best_trial
    pd.testing.assert_frame_equal(again.trials, resumed["result"].trials)
