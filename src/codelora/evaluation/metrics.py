"""Text-overlap metrics of generated answers against reference outputs."""

from __future__ import annotations


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU on its 0-100 scale (0.35 in a paper's 0-1 scale is 35 here)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def mean_rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (0-1) over pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return sum(scores) / max(len(scores), 1)
