"""Classification metrics, the paper's tables and its figures, from labels and probabilities.

Pure NumPy / scikit-learn / matplotlib: no Ray, no torch, so every number here can be
checked by hand in a unit test. ``compute_metrics`` returns a JSON-able dict that is
written next to a run; ``metrics_markdown`` and the two ``plot_*`` functions render it
the way Asghar et al. (2022) report results (Tables 1-4, Figures 4 and 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

ECE_BINS = 15  # Guo et al. (2017), "On Calibration of Modern Neural Networks"
_PROB_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 only up to rounding


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Score class probabilities against integer labels; the prediction is the argmax.

    ``y_true`` holds indices into ``classes``; ``probs`` is ``(N, len(classes))`` softmax
    output. Classes absent from ``y_true`` or from the predictions still get a row and a
    column of the confusion matrix (``labels=range(C)``); their precision/recall are 0
    (``zero_division=0``) and their ROC AUC is None, since it is undefined without both
    positives and negatives. Per-class ``accuracy`` is one-vs-rest, ``(TP + TN) / N``, as
    in the paper's tables. The result holds only lists, str, int, float and None.
    """
    y_true, probs, classes = _check_inputs(y_true, probs, classes)
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    n = len(y_true)

    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    truth, classified, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    one_vs_rest_acc = (n - truth - classified + 2 * tp) / n  # (TP + TN) / N

    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "truth": int(truth[i]),
            "classified": int(classified[i]),
            "accuracy": float(one_vs_rest_acc[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "classes": list(classes),
        "n": n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": per_class,
        "macro": _averaged(y_true, y_pred, labels, "macro"),
        "weighted": _averaged(y_true, y_pred, labels, "weighted"),
        "confusion_matrix": cm.tolist(),
        "roc_auc_ovr": _roc_auc_ovr(y_true, probs, classes),
        "ece": expected_calibration_error(y_true, probs),
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
    }


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE on the top-class confidence: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    Bins are ``n_bins`` equal-width intervals ``(k/n_bins, (k+1)/n_bins]`` (a confidence of
    exactly 0 falls in the first). scikit-learn has no ECE, hence these few lines.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bin_of, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bin_of, weights=correct.astype(float), minlength=n_bins)
    # Sum over bins of |correct - confidence| totals, i.e. |B| * |acc - conf| per bin.
    return float(np.abs(correct_sum - conf_sum).sum() / len(y_true))


def metrics_markdown(m: dict[str, Any], title: str) -> str:
    """Render ``compute_metrics`` output like the paper's Tables 1-4, then the confusion matrix."""
    header = "| Class | Truth | Classified | Accuracy | Precision | Recall | F-measure |"
    lines = [f"## {title}", "", header, "|---|--:|--:|--:|--:|--:|--:|"]
    for name in m["classes"]:
        c = m["per_class"][name]
        lines.append(
            f"| {name} | {c['truth']} | {c['classified']} | {c['accuracy']:.4f} "
            f"| {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} |"
        )
    for avg in ("macro", "weighted"):
        a = m[avg]
        lines.append(
            f"| *{avg} avg* | {m['n']} | {m['n']} |  "
            f"| {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} |"
        )
    macro_auc = m["roc_auc_ovr"]["macro"]
    lines += [
        "",
        f"Overall accuracy: **{m['accuracy']:.4f}** (n = {m['n']}); "
        f"macro ROC AUC (one-vs-rest): {_fmt(macro_auc)}; "
        f"ECE ({ECE_BINS} bins): {m['ece']:.4f}; log loss: {m['log_loss']:.4f}",
        "",
        "Confusion matrix (rows: truth, columns: predicted)",
        "",
        "| truth \\ predicted | " + " | ".join(m["classes"]) + " |",
        "|---|" + "--:|" * len(m["classes"]),
    ]
    for name, row in zip(m["classes"], m["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(m: dict[str, Any], path: str | Path, title: str) -> Path:
    """Write the confusion matrix as a PNG: counts in the cells, colour by row-normalised rate."""
    cm = np.asarray(m["confusion_matrix"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    # A class absent from the truth has an all-zero row; keep it white instead of NaN.
    rate = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.6 + 1.1 * len(m["classes"])
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    disp = ConfusionMatrixDisplay(rate, display_labels=m["classes"])
    disp.plot(ax=ax, include_values=False, cmap="Blues", xticks_rotation=45, colorbar=True)
    disp.im_.set_clim(0.0, 1.0)
    disp.im_.colorbar.set_label("fraction of the true class")
    for (i, j), count in np.ndenumerate(cm.astype(int)):
        colour = "white" if rate[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n{rate[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Truth")
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Write loss and accuracy against epoch, train and validation, as a two-panel PNG.

    Rows need ``epoch``; a missing or None ``train_loss``/``val_loss``/``train_acc``/
    ``val_acc`` leaves a gap instead of failing (e.g. an epoch without validation).
    """
    if not history:
        raise ValueError("plot_curves needs at least one history row, got none")
    if any("epoch" not in row for row in history):
        raise ValueError(f"every history row needs an 'epoch' key, got keys {set(history[0])}")
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, (metric, label) in zip(panels, (("loss", "Loss"), ("acc", "Accuracy")), strict=True):
        for split, style in (("train", "-o"), ("val", "--s")):
            values = [_or_nan(row.get(f"{split}_{metric}")) for row in history]
            ax.plot(epochs, values, style, markersize=3, label=f"{split} {label.lower()}")
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def _check_inputs(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"probs must be (N, {len(classes)}) for classes {classes}, got shape {probs.shape}"
        )
    if y_true.ndim != 1 or len(y_true) != len(probs):
        raise ValueError(f"y_true must be 1-D with {len(probs)} labels, got shape {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise TypeError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    bad = y_true[(y_true < 0) | (y_true >= len(classes))]
    if bad.size:
        raise ValueError(f"y_true has indices outside 0..{len(classes) - 1}: {sorted(set(bad))}")
    row_sums = probs.sum(axis=1)
    if (probs < 0).any() or not np.allclose(row_sums, 1.0, atol=_PROB_SUM_TOL):
        raise ValueError(
            "probs rows must be probabilities summing to 1 (softmax, not logits); "
            f"row sums range {row_sums.min():.4g}..{row_sums.max():.4g}"
        )
    return y_true, probs / row_sums[:, None], classes


def _averaged(y_true, y_pred, labels, average: str) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def _roc_auc_ovr(y_true, probs, classes) -> dict[str, Any]:
    per_class: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        positives = y_true == i
        # AUC needs both positives and negatives; otherwise it is undefined, not 0 or 1.
        defined = 0 < positives.sum() < len(y_true)
        per_class[name] = float(roc_auc_score(positives, probs[:, i])) if defined else None
    known = [v for v in per_class.values() if v is not None]
    return {"per_class": per_class, "macro": float(np.mean(known)) if known else None}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
