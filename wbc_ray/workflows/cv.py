"""`wbc-ray cv`: k-fold cross-validation, one full training run per fold.

Each fold is an ordinary run named ``<name>-fold<k>`` (so an interrupted CV resumes fold by
fold, and each fold has its own checkpoint, curves and test report); the summary pools the
k test parts, which together hold every image exactly once: the summed confusion matrix,
the pooled accuracy and per-class precision/recall/F1, and the per-fold spread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from wbc_ray import storage
from wbc_ray.config import RunConfig
from wbc_ray.console import say
from wbc_ray.workflows.train import TrainOutcome, run_dir_of, run_name, train


@dataclass(frozen=True)
class CVOutcome:
    summary: dict
    folds: list[TrainOutcome]
    files: dict[str, str]


def fold_config(cfg: RunConfig, folds: int, fold: int, name: str) -> RunConfig:
    return replace(cfg, data=replace(cfg.data, folds=folds, fold=fold),
                   train=replace(cfg.train, name=f"{name}-fold{fold}"))


DEFAULT_FOLDS = 5


def cross_validate(cfg: RunConfig) -> CVOutcome:
    """Train and test ``cfg`` on each of its ``data.folds`` folds (default
    :data:`DEFAULT_FOLDS`); write ``cv.json`` and ``cv.md``."""
    folds = cfg.data.folds or DEFAULT_FOLDS
    name = run_name(cfg)
    outcomes = []
    for k in range(folds):
        say(f"fold {k + 1}/{folds}")
        outcomes.append(train(fold_config(cfg, folds, k, name)))
    summary = pool([o.test_metrics for o in outcomes])
    summary.update({"folds": folds, "split": cfg.data.split, "groups": cfg.data.groups,
                    "model": cfg.model.name,
                    "runs": [o.result.run_dir for o in outcomes]})
    out = run_dir_of(replace(cfg, train=replace(cfg.train, name=name)))
    files = {"json": storage.join(out, "cv.json"), "markdown": storage.join(out, "cv.md")}
    storage.write_text(files["json"], json.dumps(summary, indent=2))
    storage.write_text(files["markdown"], to_markdown(summary))
    return CVOutcome(summary, outcomes, files)


def pool(per_fold: list[dict]) -> dict:
    """Pooled metrics over the folds' test parts (``compute_metrics`` dicts)."""
    classes = per_fold[0]["classes"]
    cm = np.sum([np.asarray(m["confusion_matrix"]) for m in per_fold], axis=0)
    tp, truth, called = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, called, out=np.zeros(len(tp)), where=called > 0)
    recall = np.divide(tp, truth, out=np.zeros(len(tp)), where=truth > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)),
                   where=(precision + recall) > 0)
    accs = [m["accuracy"] for m in per_fold]
    f1s = [m["macro"]["f1"] for m in per_fold]
    return {
        "classes": classes,
        "images": int(cm.sum()),
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_f1": float(f1.mean()),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f),
                          "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, truth,
                                               strict=True)},
        "confusion_matrix": cm.tolist(),
        "fold_accuracy": accs,
        "fold_accuracy_mean": float(np.mean(accs)),
        "fold_accuracy_std": float(np.std(accs)),
        "fold_macro_f1": f1s,
    }


def to_markdown(s: dict) -> str:
    lines = [f"# {s['folds']}-fold cross-validation: {s['model']} ({s['split']} split)", "",
             f"Pooled over {s['images']} test images: accuracy {s['accuracy']:.4f}, "
             f"macro F1 {s['macro_f1']:.4f}; per fold {s['fold_accuracy_mean']:.4f} "
             f"+- {s['fold_accuracy_std']:.4f} "
             f"({', '.join(f'{a:.3f}' for a in s['fold_accuracy'])}).", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
              f"{m['support']} |" for c, m in s["per_class"].items()]
    lines += ["", "Confusion matrix (rows: truth, columns: prediction, order as above):", "",
              "```", *(str(row) for row in s["confusion_matrix"]), "```", ""]
    return "\n".join(lines)
