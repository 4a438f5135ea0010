"""Base model vs adapter on the held-out test split: loss, BLEU, ROUGE-L, side by side.

One PeftModel serves both: inside `disable_adapter()` it is exactly the base model, so the
base weights are loaded once.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

from codelora.config import EvalConfig
from codelora.data.prompts import user_message
from codelora.evaluation.generate import generate_answers
from codelora.evaluation.metrics import corpus_bleu, exact_match, rouge_scores, syntax_valid
from codelora.training.loss import validation_loss
from codelora.training.outputs import write_json_atomic, write_text_atomic

METRICS = [  # key, label, higher is better
    ("eval_loss", "eval loss (answer tokens)", False),
    ("perplexity", "perplexity", False),
    ("bleu", "BLEU (sacrebleu, 0-100)", True),
    ("rouge1_f1", "ROUGE-1 F1 (0-1)", True),
    ("rouge2_f1", "ROUGE-2 F1 (0-1)", True),
    ("rougeL_precision", "ROUGE-L precision", True),
    ("rougeL_recall", "ROUGE-L recall", True),
    ("rougeL_f1", "ROUGE-L F1 (0-1)", True),
    ("exact_match", "exact match (code)", True),
    ("syntax_valid", "syntax valid (ast.parse of the code)", True),
]


def evaluate_model(model, fmt, test_rows, test_examples, ec: EvalConfig, pad_id: int, device: str) -> tuple[dict, list[str]]:
    t0 = time.perf_counter()
    loss = validation_loss(model, test_examples, ec.batch_size, pad_id, device)
    rows = test_rows[: ec.limit] if ec.limit else test_rows
    answers = generate_answers(model, fmt, [user_message(r) for r in rows], ec.max_new_tokens, ec.batch_size, device)
    refs = [r["output"] for r in rows]
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bleu": corpus_bleu(answers, refs),
        **rouge_scores(answers, refs),
        "exact_match": exact_match(answers, refs),
        "syntax_valid": syntax_valid(answers),
        "seconds": round(time.perf_counter() - t0, 1),
    }, answers


def compare_base_and_adapter(peft_model, fmt, test_rows, test_examples, ec: EvalConfig, pad_id: int, device: str,
                             out_dir: Path) -> dict:
    results, answers = {}, {}
    for name, ctx in (("base", peft_model.disable_adapter()), ("adapter", contextlib.nullcontext())):
        print(f"codelora: evaluating {name} on {len(test_rows)} test rows ...", file=sys.stderr, flush=True)
        with ctx:
            results[name], answers[name] = evaluate_model(peft_model, fmt, test_rows, test_examples, ec, pad_id, device)
    n_gen = len(answers["base"])
    report = {
        "split": "test",
        "rows_for_loss": len(test_examples),
        "rows_generated": n_gen,
        "max_new_tokens": ec.max_new_tokens,
        "decoding": "greedy",
        "models": results,
    }
    write_json_atomic(out_dir / "eval_report.json", report)
    write_text_atomic(out_dir / "eval_report.md", render_markdown(report))
    plot_comparison(report, out_dir / "eval_report.png")
    samples = [
        {"instruction": r["instruction"], "input": r["input"], "reference": r["output"],
         "base": answers["base"][i], "adapter": answers["adapter"][i]}
        for i, r in enumerate(test_rows[:n_gen])
    ]
    write_text_atomic(out_dir / "eval_samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return report


def plot_comparison(report: dict, path: Path) -> None:
    """Grouped bars, base vs adapter, for the metrics on a 0-1 scale (BLEU divided by 100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("bleu", "BLEU/100"), ("rouge1_f1", "ROUGE-1 F1"), ("rouge2_f1", "ROUGE-2 F1"),
            ("rougeL_f1", "ROUGE-L F1"), ("exact_match", "exact match"), ("syntax_valid", "syntax valid")]
    models = report["models"]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for i, (name, color) in enumerate((("base", "tab:gray"), ("adapter", "tab:blue"))):
        vals = [models[name][k] / (100 if k == "bleu" else 1) for k, _ in keys]
        ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=name, color=color)
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_ylim(0, 1)
    ax.set_title(f"Base vs adapter on the held-out test split ({report['rows_generated']} answers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_markdown(report: dict) -> str:
    base, adapter = report["models"]["base"], report["models"]["adapter"]
    lines = [
        "# Evaluation: base model vs adapter",
        "",
        f"Held-out {report['split']} split: loss over {report['rows_for_loss']} rows; "
        f"{report['decoding']} answers (at most {report['max_new_tokens']} new tokens) for {report['rows_generated']} rows.",
        "",
        "| metric | base | adapter | better |",
        "| --- | ---: | ---: | :---: |",
    ]
    for key, label, higher in METRICS:
        b, a = base[key], adapter[key]
        better = "adapter" if (a > b if higher else a < b) else ("same" if a == b else "base")
        lines.append(f"| {label} | {b:.4f} | {a:.4f} | {better} |")
    lines += ["", f"Time: base {base['seconds']} s, adapter {adapter['seconds']} s. "
                  "Answers side by side: eval_samples.jsonl.", "", "![base vs adapter](eval_report.png)", ""]
    return "\n".join(lines)
