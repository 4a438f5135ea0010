import pytest

from codelora.evaluation.metrics import corpus_bleu, rouge_scores


def test_metrics_separate_right_from_wrong():
    refs = ["def add(a, b):\n    return a + b", "print('hello world')"]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert rouge_scores(refs, refs)["rougeL_f1"] == pytest.approx(1.0)
    wrong = ["import os", "while True: pass"]
    assert corpus_bleu(wrong, refs) < 5 and rouge_scores(wrong, refs)["rougeL_f1"] < 0.2


def test_rouge_exact_match_and_syntax():
    from codelora.evaluation.metrics import exact_match, rouge_scores, syntax_valid

    refs = ["```python\nx = 1\n```", "def f():\n    return 2"]
    hyps = ["Here:\n```python\nx = 1\n```", "def f(:\n    return 2"]
    assert exact_match(hyps, refs) == 0.5
    assert syntax_valid(hyps) == 0.5
    s = rouge_scores(refs, refs)
    assert s["rouge1_f1"] == pytest.approx(1.0) and s["rouge2_recall"] == pytest.approx(1.0)
    assert set(s) == {f"{k}_{m}" for k in ("rouge1", "rouge2", "rougeL") for m in ("precision", "recall", "f1")}
