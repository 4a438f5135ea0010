"""Text metrics of generated answers against reference outputs."""

from __future__ import annotations

import ast

from codelora.data.clean import extract_code


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU on its 0-100 scale (0.35 in a paper's 0-1 scale is 35 here)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L precision, recall and F1 (0-1) over pairs, e.g. rougeL_f1."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds))
    sums = {f"{k}_{m}": 0.0 for k in kinds for m in ("precision", "recall", "f1")}
    for hyp, ref in zip(hypotheses, references):
        s = scorer.score(ref, hyp)
        for k in kinds:
            sums[f"{k}_precision"] += s[k].precision
            sums[f"{k}_recall"] += s[k].recall
            sums[f"{k}_f1"] += s[k].fmeasure
    n = max(len(hypotheses), 1)
    return {k: v / n for k, v in sums.items()}


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Share of answers whose code equals the reference's code (whitespace at the ends ignored)."""
    pairs = list(zip(hypotheses, references))
    return sum(extract_code(h).strip() == extract_code(r).strip() for h, r in pairs) / max(len(pairs), 1)


def syntax_valid(hypotheses: list[str]) -> float:
    """Share of answers whose code (first fenced block, else the whole answer) parses."""
    ok = 0
    for h in hypotheses:
        try:
            ast.parse(extract_code(h))
            ok += 1
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            pass
    return ok / max(len(hypotheses), 1)
