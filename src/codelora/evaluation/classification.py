"""Classification metrics: accuracy, macro and weighted precision/recall/F1, and per-class scores.

The definitions match scikit-learn's accuracy_score and precision_recall_fscore_support with
zero_division=0 (scikit-learn is not a dependency, so they are computed here):

- a class's precision is TP / (TP + FP), recall TP / (TP + FN), F1 their harmonic mean; each
  is 0 when its denominator is 0 (a class never predicted has precision 0, never true recall 0);
- macro averages are unweighted means over the labels present in y_true or y_pred, as
  scikit-learn does when no `labels` argument is given: a label absent from both would only add
  an arbitrary 0 (or 1) to the mean;
- weighted F1 weights each class's F1 by its support (true count).
"""

from __future__ import annotations


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0  # zero_division=0


def classification_metrics(y_true: list[int], y_pred: list[int], n_labels: int) -> dict:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no predictions to score")
    bad = sorted({y for y in (*y_true, *y_pred) if not 0 <= y < n_labels})
    if bad:
        raise ValueError(f"label ids {bad} are outside 0..{n_labels - 1}")
    per_class = []
    for k in range(n_labels):
        tp = sum(t == k and p == k for t, p in zip(y_true, y_pred))
        predicted, support = sum(p == k for p in y_pred), sum(t == k for t in y_true)
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append({"label_id": k, "precision": precision, "recall": recall, "f1": f1, "support": support})
    seen = set(y_true) | set(y_pred)
    present = [c for c in per_class if c["label_id"] in seen]
    n = len(y_true)
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / n,
        "macro_precision": sum(c["precision"] for c in present) / len(present),
        "macro_recall": sum(c["recall"] for c in present) / len(present),
        "macro_f1": sum(c["f1"] for c in present) / len(present),
        "weighted_f1": sum(c["f1"] * c["support"] for c in per_class) / n,
        "n": n,
        "per_class": per_class,  # every id in 0..n_labels-1; ids absent from both lists have support 0
    }
