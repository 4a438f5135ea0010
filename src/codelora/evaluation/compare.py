"""Base model vs tuned model on the held-out test split, side by side: loss, BLEU, ROUGE for
generated answers (causal LM, seq2seq); loss, accuracy, precision, recall, F1 for classifiers.

For LoRA one PeftModel serves both: inside `disable_adapter()` it is exactly the base model, so
the base weights are loaded once. Full / top-K runs compare against a fresh copy of the base;
method `none` has only the base. The tuned model is reported under the name "adapter" whatever
the method (report["method"] says which), so every report reads the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from codelora.config import EvalConfig, GenerateConfig, RunConfig
from codelora.console import say
from codelora.data.prompts import ClassFormat, Seq2SeqFormat, user_message
from codelora.decoding.generate import generate_answers
from codelora.decoding.gguf_model import GgufModel
from codelora.evaluation.classification import classification_metrics
from codelora.evaluation.metrics import corpus_bleu, exact_match, rouge_scores, syntax_valid
from codelora.io.figures import pyplot, save_figure
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import EVAL_CHART, EVAL_REPORT, EVAL_REPORT_MD, EVAL_SAMPLES
from codelora.models.collate import device_batches
from codelora.models.loss import validation_loss

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
CLASS_METRICS = [("eval_loss", "eval loss (cross-entropy)", False), ("accuracy", "accuracy", True),
                 ("macro_precision", "precision (macro)", True), ("macro_recall", "recall (macro)", True),
                 ("macro_f1", "F1 (macro)", True), ("weighted_f1", "F1 (weighted by support)", True)]
METHOD_LABELS = {"lora": "adapter", "full": "full fine-tune", "none": "base"}


@torch.no_grad()
def predict_labels(model, examples, batch_size: int, pad_id: int, device: str) -> list[int]:
    model.eval()
    preds = []
    idx = list(range(len(examples)))
    for batch in device_batches(examples, [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)], pad_id,
                                device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        preds += logits.argmax(-1).tolist()
    return preds


def evaluate_classifier(model, fmt: ClassFormat, test_examples, ec: EvalConfig, pad_id: int, device: str):
    t0 = time.perf_counter()
    loss = validation_loss(model, test_examples, ec.batch_size, pad_id, device)
    preds = predict_labels(model, test_examples, ec.batch_size, pad_id, device)
    metrics = classification_metrics([e.label for e in test_examples], preds, len(fmt.labels))
    return {"eval_loss": loss, **metrics, "seconds": round(time.perf_counter() - t0, 1)}, [fmt.labels[p] for p in preds]


def evaluate_model(model, fmt, test_rows, test_examples, ec: EvalConfig, gen: GenerateConfig, pad_id: int,
                   device: str, name: str = "") -> tuple[dict, list[str]]:
    """(metrics, outputs): generated answers, or predicted labels for a classifier. `name` (the
    model's, as reported) labels the generation's progress bar."""
    if isinstance(fmt, ClassFormat):
        return evaluate_classifier(model, fmt, test_examples, ec, pad_id, device)
    t0 = time.perf_counter()
    if isinstance(model, GgufModel):
        loss = model.validation_loss(test_examples)
    else:
        loss = validation_loss(model, test_examples, ec.batch_size, pad_id, device)
    rows = test_rows[: ec.limit] if ec.limit else test_rows
    answers = generate_answers(model, fmt, [user_message(r) for r in rows], gen, ec.batch_size, device,
                               progress_desc=f"{name}: generating" if name else "generating")
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


def candidates(model, method: str, fresh_base):
    """(name, model, context) to evaluate: base first, then the tuned model. LoRA's base is the same
    PeftModel with its adapter disabled; full / top-K compare with `fresh_base()`; none has no tuned model."""
    if method == "lora":
        return [("base", model, model.disable_adapter()), ("adapter", model, contextlib.nullcontext())]
    if method == "none":
        return [("base", model, contextlib.nullcontext())]
    return [("base", fresh_base(), contextlib.nullcontext()), ("adapter", model, contextlib.nullcontext())]


def compare_models(candidates, fmt, test_rows, test_examples, cfg: RunConfig, pad_id: int, device: str,
                   out_dir: Path, precision: dict | None = None) -> dict:
    """Evaluate each (name, model, context) in turn; write eval_report.{json,md,png} and the samples."""
    method = cfg.train.method
    results, answers = {}, {}
    for name, model, ctx in candidates:
        shown = METHOD_LABELS.get(method, method) if name == "adapter" else name
        say(f"evaluating {shown} on {len(test_rows)} test rows ...")  # quiet with --quiet, unlike a bare print
        with ctx:
            results[name], answers[name] = evaluate_model(model, fmt, test_rows, test_examples, cfg.eval, cfg.generate,
                                                          pad_id, device, name=shown)
    classifier = isinstance(fmt, ClassFormat)
    n_gen = len(answers["base"])
    report = {
        "split": "test",
        "method": method,
        "task": "classification" if classifier else ("seq2seq" if isinstance(fmt, Seq2SeqFormat) else "causal-lm"),
        "rows_for_loss": len(test_examples),
        "rows_generated": 0 if classifier else n_gen,
        "max_new_tokens": cfg.generate.max_new_tokens,
        "decoding": describe_decoding(cfg.generate),
        "precision": precision,  # the PyTorch models' compute precision (eval.precision), with why
        "models": results,
    }
    write_json_atomic(out_dir / EVAL_REPORT, report)
    write_text_atomic(out_dir / EVAL_REPORT_MD, render_markdown(report))
    plot_comparison(report, out_dir / EVAL_CHART)
    if classifier:
        samples = [{"text": r["text"], "label": r["label"], **{k: answers[k][i] for k in answers}}
                   for i, r in enumerate(test_rows)]
    else:
        samples = [{"instruction": r["instruction"], "input": r["input"], "reference": r["output"],
                    **{k: answers[k][i] for k in answers}} for i, r in enumerate(test_rows[:n_gen])]
    write_text_atomic(out_dir / EVAL_SAMPLES, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return report


def describe_decoding(gen: GenerateConfig) -> str:
    return "greedy" if gen.temperature == 0 else f"sampled (temperature {gen.temperature:g}, top_p {gen.top_p:g})"


def plot_comparison(report: dict, path: Path) -> None:
    """Grouped bars, base vs adapter, for the metrics on a 0-1 scale (BLEU divided by 100)."""
    if report.get("task") == "classification":
        keys = [(k, label) for k, label, _ in CLASS_METRICS if k != "eval_loss"]  # the 0-1 scores
        what = f"{report['rows_for_loss']} texts"
    else:
        keys = [("bleu", "BLEU/100"), ("rouge1_f1", "ROUGE-1 F1"), ("rouge2_f1", "ROUGE-2 F1"),
                ("rougeL_f1", "ROUGE-L F1"), ("exact_match", "exact match"), ("syntax_valid", "syntax valid")]
        what = f"{report['rows_generated']} answers"
    models = report["models"]
    x = np.arange(len(keys))
    fig, ax = pyplot().subplots(figsize=(9, 4), dpi=110)
    names = list(models)
    width = 0.76 / len(names)
    colors = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for i, (name, color) in enumerate(zip(names, colors)):
        vals = [models[name][k] / (100 if k == "bleu" else 1) for k, _ in keys]
        label = tuned_label(report) if name == "adapter" else name
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=label, color=color)
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_ylim(0, 1)
    title = "Base vs " + " vs ".join(tuned_label(report) if n == "adapter" else n for n in names[1:]) \
        if len(names) > 1 else "Base model (method none)"
    ax.set_title(f"{title} on the held-out test split ({what})")
    ax.legend()
    save_figure(fig, path)


def tuned_label(report: dict) -> str:
    return METHOD_LABELS.get(report["method"], report["method"])


def render_markdown(report: dict) -> str:
    models = report["models"]
    base, tuned = models["base"], models.get("adapter")
    label = tuned_label(report)
    extra = [n for n in models if n not in ("base", "adapter")]  # GGUF files in llama.cpp (eval --gguf)
    classifier = report.get("task") == "classification"
    what = ("predicted labels" if classifier else
            f"{report['decoding']} answers (at most {report['max_new_tokens']} new tokens) for "
            f"{report['rows_generated']} rows")
    shown = [("base", "base")] + ([("adapter", label)] if tuned else []) + [(n, n) for n in extra]
    compare = tuned is not None and not extra  # base vs tuned: say which is better
    title = " vs ".join(t for _, t in shown[1:])
    lines = [
        f"# Evaluation: base model{' vs ' + title if title else ' (method none: no training)'}",
        "",
        f"Held-out {report['split']} split: loss over {report['rows_for_loss']} rows; {what}"
        + (f"; computed in {report['precision']['chosen']}" if report.get("precision") else "") + ".",
        "",
        "| metric | " + " | ".join(t for _, t in shown) + " |" + (" better |" if compare else ""),
        "| --- |" + " ---: |" * len(shown) + (" :---: |" if compare else ""),
    ]
    for key, name, higher in CLASS_METRICS if classifier else METRICS:
        cells = " | ".join(f"{models[n][key]:.4f}" for n, _ in shown)
        if compare:
            a, b = tuned[key], base[key]
            better = label if (a > b if higher else a < b) else ("same" if a == b else "base")
            cells += f" | {better}"
        lines.append(f"| {name} | {cells} |")
    times = ", ".join(f"{t} {models[n]['seconds']} s" for n, t in shown)
    lines += ["", f"Time: {times}. {'Predictions' if classifier else 'Answers'} side by side: {EVAL_SAMPLES}.",
              "", f"![evaluation]({EVAL_CHART})", ""]
    return "\n".join(lines)
