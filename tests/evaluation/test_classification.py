"""Classification metrics against hand-computed values (scikit-learn's definitions, zero_division=0)."""

import pytest

from codelora.evaluation.classification import classification_metrics


def _per_class(m, key):
    return [c[key] for c in m["per_class"]]


def test_three_classes_where_macro_and_weighted_differ():
    # class 0: TP 2, predicted 2, support 3 -> P 1, R 2/3, F1 0.8
    # class 1: TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
    # class 2: TP 1, predicted 2, support 1 -> P 1/2, R 1, F1 2/3
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert _per_class(m, "precision") == pytest.approx([1.0, 0.5, 0.5])
    assert _per_class(m, "recall") == pytest.approx([2 / 3, 0.5, 1.0])
    assert _per_class(m, "f1") == pytest.approx([0.8, 0.5, 2 / 3])
    assert _per_class(m, "support") == [3, 2, 1]
    assert _per_class(m, "label_id") == [0, 1, 2]
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["weighted_f1"] == pytest.approx(61 / 90)  # (0.8*3 + 0.5*2 + 2/3*1) / 6
    assert m["n"] == 6


def test_a_class_never_predicted_scores_zero_and_absent_labels_stay_out_of_the_macro():
    # class 0: P 1, R 1, F1 1; class 1: TP 1, predicted 3, support 1 -> P 1/3, R 1, F1 1/2;
    # class 2: never predicted, support 2 -> P 0, R 0, F1 0; class 3: in neither list
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], 4)
    assert m["accuracy"] == pytest.approx(0.5)
    assert _per_class(m, "precision") == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert _per_class(m, "recall") == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert _per_class(m, "f1") == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert _per_class(m, "support") == [1, 1, 2, 0]
    assert m["macro_precision"] == pytest.approx(4 / 9)  # over classes 0-2 only
    assert m["macro_recall"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["weighted_f1"] == pytest.approx(0.375)  # (1*1 + 0.5*1 + 0*2) / 4


def test_perfect_predictions_score_one():
    y = [2, 0, 1, 1, 0]
    m = classification_metrics(y, list(y), 3)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert m[key] == 1.0, key
    assert all(c["precision"] == c["recall"] == c["f1"] == 1.0 for c in m["per_class"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_metrics([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="3 items but y_pred has 2"):
        classification_metrics([0, 1, 1], [0, 1], 2)
