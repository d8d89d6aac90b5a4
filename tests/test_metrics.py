"""Metrics against numbers worked out by hand, and the rendered table and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from wbc_ray.evaluation.metrics import (
    compute_metrics,
    expected_calibration_error,
    metrics_markdown,
    plot_confusion,
    plot_curves,
)

CLASSES = ("A", "B", "C")
# Ten samples, three classes.
#   truth      A A A A  B B B  C C C
#   predicted  A A A B  B B A  C C B
# Confusion (rows truth, columns predicted):
#        A  B  C
#   A  [ 3, 1, 0 ]   truth 4
#   B  [ 1, 2, 0 ]   truth 3
#   C  [ 0, 1, 2 ]   truth 3
#   classified: A 4, B 4, C 2
# precision A 3/4, B 2/4, C 2/2; recall A 3/4, B 2/3, C 2/3
# F1 A 0.75, B 2*(1/2)(2/3)/(1/2+2/3) = 4/7, C 2*1*(2/3)/(1+2/3) = 0.8
# one-vs-rest accuracy (TP+TN)/N: A (3+5)/10, B (2+5)/10, C (2+7)/10
# overall accuracy 7/10
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 1])


def one_hot_probs(pred: np.ndarray, top: float, n_classes: int = 3) -> np.ndarray:
    """Rows with ``top`` on the predicted class and the rest split evenly."""
    top = np.broadcast_to(np.asarray(top, dtype=float), pred.shape)
    probs = np.repeat(((1 - top) / (n_classes - 1))[:, None], n_classes, axis=1)
    probs[np.arange(len(pred)), pred] = top
    return probs


@pytest.fixture
def hand_metrics() -> dict:
    return compute_metrics(Y_TRUE, one_hot_probs(Y_PRED, 0.8), CLASSES)


def test_hand_computed_per_class_numbers(hand_metrics):
    m = hand_metrics
    assert m["classes"] == list(CLASSES)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    expected = {
        "A": dict(precision=0.75, recall=0.75, f1=0.75, truth=4, classified=4, accuracy=0.8),
        "B": dict(precision=0.5, recall=2 / 3, f1=4 / 7, truth=3, classified=4, accuracy=0.7),
        "C": dict(precision=1.0, recall=2 / 3, f1=0.8, truth=3, classified=2, accuracy=0.9),
    }
    for name, want in expected.items():
        got = m["per_class"][name]
        assert got["support"] == want["truth"]
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (name, key)


def test_hand_computed_averages(hand_metrics):
    m = hand_metrics
    # macro: plain means of the per-class numbers above
    assert m["macro"]["precision"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert m["macro"]["recall"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert m["macro"]["f1"] == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    # weighted by truth counts 4, 3, 3
    assert m["weighted"]["precision"] == pytest.approx((4 * 0.75 + 3 * 0.5 + 3 * 1.0) / 10)
    assert m["weighted"]["recall"] == pytest.approx(0.7)
    assert m["weighted"]["f1"] == pytest.approx((4 * 0.75 + 3 * 4 / 7 + 3 * 0.8) / 10)


def test_calibration_and_log_loss_of_constant_confidence(hand_metrics):
    # Every confidence is 0.8, so one bin holds everything: |0.7 accuracy - 0.8| = 0.1.
    assert hand_metrics["ece"] == pytest.approx(0.1)
    # 7 right answers at p = 0.8, 3 wrong ones whose true class got p = 0.1.
    assert hand_metrics["log_loss"] == pytest.approx((7 * -math.log(0.8) + 3 * -math.log(0.1)) / 10)


def test_result_is_strict_json(hand_metrics):
    assert json.loads(json.dumps(hand_metrics, allow_nan=False)) == hand_metrics


def test_ece_hand_computed_over_three_bins():
    # Bins are 1/15 wide. Confidences and correctness:
    #   0.95 right, 0.95 wrong -> bin (14/15, 1]:     n=2, acc 0.5, conf 0.95 -> 2/5 * 0.45
    #   0.55 right, 0.55 right -> bin (8/15, 9/15]:   n=2, acc 1.0, conf 0.55 -> 2/5 * 0.45
    #   0.35 wrong             -> bin (5/15, 6/15]:   n=1, acc 0.0, conf 0.35 -> 1/5 * 0.35
    # ECE = 0.18 + 0.18 + 0.07 = 0.43
    pred = np.array([0, 0, 1, 2, 1])
    y_true = np.array([0, 1, 1, 2, 0])
    probs = one_hot_probs(pred, np.array([0.95, 0.95, 0.55, 0.55, 0.35]))
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.43)


@pytest.mark.parametrize(
    ("confidences", "expected"),
    [
        # 0.68 and 0.72 share the bin (10/15, 11/15] (ten bins would split them at 0.7):
        # acc 0.5, conf 0.70 -> 0.2
        ((0.68, 0.72), 0.2),
        # 0.62 and 0.68 straddle 10/15 (ten bins would join them):
        # (|1 - 0.62| + |0 - 0.68|) / 2 = 0.53
        ((0.62, 0.68), 0.53),
    ],
)
def test_ece_uses_fifteen_equal_bins(confidences, expected):
    y_true = np.array([0, 1])  # the first prediction is right, the second wrong
    probs = one_hot_probs(np.array([0, 0]), np.array(confidences))
    assert expected_calibration_error(y_true, probs) == pytest.approx(expected)


def test_class_absent_from_truth_and_predictions():
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    m = compute_metrics(y_true, probs, CLASSES)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    c = m["per_class"]["C"]
    assert (c["precision"], c["recall"], c["f1"], c["truth"], c["classified"]) == (0, 0, 0, 0, 0)
    assert c["accuracy"] == 1.0  # every sample is correctly "not C"
    assert m["roc_auc_ovr"]["per_class"]["C"] is None
    assert m["roc_auc_ovr"]["macro"] == pytest.approx(1.0)  # mean over A and B only
    json.dumps(m, allow_nan=False)


def test_class_present_in_truth_but_never_predicted():
    # truth A A B C, predicted A A B B: C is never predicted.
    y_true = np.array([0, 0, 1, 2])
    probs = one_hot_probs(np.array([0, 0, 1, 1]), 0.6)
    m = compute_metrics(y_true, probs, CLASSES)
    c = m["per_class"]["C"]
    assert (c["truth"], c["classified"], c["precision"], c["recall"]) == (1, 0, 0.0, 0.0)
    b = m["per_class"]["B"]
    assert (b["precision"], b["recall"]) == (0.5, 1.0)
    assert m["confusion_matrix"][2] == [0, 1, 0]


def test_roc_auc_perfect_and_inverse_rankings():
    y_true = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.8, 0.9])
    perfect = compute_metrics(y_true, np.column_stack([1 - p1, p1]), ["A", "B"])
    assert perfect["roc_auc_ovr"] == {"per_class": {"A": 1.0, "B": 1.0}, "macro": 1.0}
    p1 = p1[::-1]
    inverse = compute_metrics(y_true, np.column_stack([1 - p1, p1]), ["A", "B"])
    assert inverse["roc_auc_ovr"] == {"per_class": {"A": 0.0, "B": 0.0}, "macro": 0.0}


def test_macro_auc_matches_sklearn_ovr_when_all_classes_present():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y_true = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet(np.ones(3), size=60)
    m = compute_metrics(y_true, probs, CLASSES)
    assert m["roc_auc_ovr"]["macro"] == pytest.approx(
        roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    )


@pytest.mark.parametrize(
    ("y_true", "probs", "match"),
    [
        ([0, 1], [[2.0, -1.0, 0.0], [0.0, 1.0, 3.0]], "summing to 1"),  # logits
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], r"\(N, 3\)"),
        ([0, 3], [[1.0, 0, 0], [0, 1.0, 0]], "outside"),
        ([0], [[1.0, 0, 0], [0, 1.0, 0]], "1-D with 2"),
        ([], np.zeros((0, 3)), "zero samples"),
    ],
)
def test_bad_inputs_raise_readable_errors(y_true, probs, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(np.asarray(y_true, dtype=int), np.asarray(probs), CLASSES)


def test_markdown_table_carries_the_numbers(hand_metrics):
    md = metrics_markdown(hand_metrics, "Test split")
    assert md.startswith("## Test split\n")
    assert "| Class | Truth | Classified | Accuracy | Precision | Recall | F-measure |" in md
    assert "| A | 4 | 4 | 0.8000 | 0.7500 | 0.7500 | 0.7500 |" in md
    assert "| B | 3 | 4 | 0.7000 | 0.5000 | 0.6667 | 0.5714 |" in md
    assert "| C | 3 | 2 | 0.9000 | 1.0000 | 0.6667 | 0.8000 |" in md
    assert "| *macro avg* | 10 | 10 |  | 0.7500 | 0.6944 | 0.7071 |" in md
    assert "| *weighted avg* | 10 | 10 |  | 0.7500 | 0.7000 | 0.7114 |" in md
    assert "Overall accuracy: **0.7000** (n = 10)" in md
    assert "| truth \\ predicted | A | B | C |" in md
    assert "| A | 3 | 1 | 0 |" in md
    assert "| B | 1 | 2 | 0 |" in md
    assert "| C | 0 | 1 | 2 |" in md


def assert_valid_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] > 100 and img.size[1] > 100
        img.verify()


def test_plot_confusion_writes_png(hand_metrics, tmp_path):
    out = plot_confusion(hand_metrics, tmp_path / "figs" / "cm.png", "Confusion")
    assert out == tmp_path / "figs" / "cm.png"
    assert_valid_png(out)


def test_plot_confusion_with_an_empty_truth_row(tmp_path):
    m = compute_metrics(np.array([0, 1]), np.array([[0.9, 0.1, 0], [0.2, 0.8, 0]]), CLASSES)
    assert_valid_png(plot_confusion(m, str(tmp_path / "cm.png"), "absent class"))


def test_plot_curves_writes_png_and_tolerates_gaps(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_acc": 1 - 0.5 / e,
            "val_acc": 1 - 0.6 / e,
        }
        for e in range(1, 6)
    ]
    history[2]["val_loss"] = None
    del history[3]["val_acc"]
    assert_valid_png(plot_curves(history, tmp_path / "curves.png", "Training"))


def test_plot_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_curves([], tmp_path / "x.png", "t")
