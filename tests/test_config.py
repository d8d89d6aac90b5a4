"""Typed configs: YAML loading, unknown keys, wrong types, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from wbc_ray.classes import normalise_class, resolve_classes
from wbc_ray.config import RunConfig, dump_yaml, load_run_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_are_the_papers_settings():
    cfg = load_run_config()
    assert (cfg.model.name, cfg.model.dropout, cfg.model.hidden) == ("paper_cnn", 0.2, (64,))
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs) == ("adam", 1e-4, 150)
    assert cfg.data.fractions == (0.7, 0.2, 0.1)


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 7\n  lr: 0.001\nmodel:\n  hidden: [128, 64]\n")
    cfg = load_run_config(path, {"train": {"epochs": 3, "lr": None}})
    assert cfg.train.epochs == 3  # flag beats YAML
    assert cfg.train.lr == 0.001  # YAML beats default; None flag means "not given"
    assert cfg.model.hidden == (128, 64)
    assert cfg.train.batch_size == 32  # default


def test_yaml_exponent_floats_are_numbers(tmp_path):
    cfg = load_run_config(_write(tmp_path, "train:\n  lr: 1e-4\n  weight_decay: 5E-5\n"))
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-5


def test_unknown_key_fails_naming_it(tmp_path):
    path = _write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(ValueError, match="epochz") as e:
        load_run_config(path)
    assert "run.yaml" in str(e.value)


def test_unknown_section_fails(tmp_path):
    with pytest.raises(ValueError, match="trian"):
        load_run_config(_write(tmp_path, "trian:\n  epochs: 3\n"))


def test_wrong_type_fails_naming_key(tmp_path):
    with pytest.raises(TypeError, match="epochs"):
        load_run_config(_write(tmp_path, "train:\n  epochs: many\n"))


def test_bad_literal_fails(tmp_path):
    with pytest.raises(TypeError, match="split"):
        load_run_config(_write(tmp_path, "data:\n  split: random\n"))


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_run_config(None, {"train": {"epochs": 5}, "data": {"split": "grouped"}})
    again = load_run_config(_write(tmp_path, dump_yaml(cfg)))
    assert again == cfg and isinstance(again, RunConfig)


def test_configs_are_frozen():
    cfg = load_run_config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw,canon", [
    ("EOSINOPHIL", "EOSINOPHIL"), ("eosinophil", "EOSINOPHIL"), ("Eosinophils", "EOSINOPHIL"),
    ("eosi", "EOSINOPHIL"), ("lympho", "LYMPHOCYTE"), ("Mono", "MONOCYTE"),
    ("neutrophil", "NEUTROPHIL"), ("basophil", "BASOPHIL"), ("platelet", None), ("x", None),
])
def test_class_name_normalisation(raw, canon):
    assert normalise_class(raw) == canon


def test_class_sets():
    assert resolve_classes("paper") == ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
    assert len(resolve_classes("lisc")) == 5
    assert resolve_classes("eos,neutro") == ("EOSINOPHIL", "NEUTROPHIL")
    with pytest.raises(ValueError, match="twice"):
        resolve_classes("eos,eosinophil")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_name_known_models(path):
    from wbc_ray.models import list_models

    cfg = load_run_config(str(path))
    assert cfg.model.name in list_models()
    assert cfg.data.data.startswith("../shared/data/")  # relative to the repository root
