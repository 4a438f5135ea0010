"""`codelora eval --suite humaneval | --tasks FILE [--completions FILE]`: pass@k for the base
model and one or more adapters, side by side (markdown, JSON, bar chart)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import torch

from codelora.config import EvalConfig, GenerateConfig, ModelConfig
from codelora.console import say
from codelora.data.prompts import PromptFormat
from codelora.decoding.generate import generate_answers
from codelora.decoding.gguf_model import GgufModel, context_for
from codelora.errors import CodeloraError
from codelora.evaluation.execution import (Task, TaskResult, execute, humaneval_tasks, load_completions,
                                           load_tasks_file, results_to_jsonl, summarize)
from codelora.evaluation.sandbox import Limits, isolation
from codelora.io.figures import pyplot, save_figure
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import EXEC_ANSWERS, EXEC_CHART, EXEC_REPORT, EXEC_REPORT_MD, exec_samples
from codelora.models.lora import load_adapter
from codelora.models.precision import precision_for
from codelora.models.sources import load_base, pick_device

EXECUTION_FLAG_MESSAGE = (
    "executing model-generated code needs --allow-code-execution: each sample would run as a separate, sandboxed "
    "process (no network, capped memory, processes, CPU time and output); nothing was executed"
)


def _ks(samples: int) -> tuple[int, ...]:
    return tuple(k for k in (1, 5, 10, 100) if k <= samples)


def score_completions(tasks: list[Task], path: str | Path, out: Path, limits: Limits) -> dict:
    completions = load_completions(path, tasks)
    scored = [t for t in tasks if t.task_id in completions]
    n = min(len(v) for v in completions.values())
    t0 = time.perf_counter()
    results = execute(scored, completions, limits, desc="completions: running")
    report = _report({"completions": (summarize(results, _ks(n)), results)}, scored, limits, time.perf_counter() - t0)
    report["completions_file"] = str(path)
    _write(report, {"completions": results}, out)
    return report


def _generate(model, fmt, tasks: list[Task], ec: EvalConfig, gen: GenerateConfig, device: str,
              seed: int, name: str = "") -> dict[str, list[str]]:
    """`ec.samples` answers per task: one greedy answer, or seeded samples at ec.sample_temperature.
    `name` (the model's) labels the progress bar."""
    questions = [t.instruction for t in tasks]
    what = f"{name}: generating" if name else "generating"
    if ec.samples == 1:
        answers = generate_answers(model, fmt, questions, gen, ec.batch_size, device, progress_desc=what)
        return {t.task_id: [a] for t, a in zip(tasks, answers)}
    sampled = dataclasses.replace(gen, temperature=ec.sample_temperature)
    out: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    for i in range(ec.samples):
        torch.manual_seed(seed + i)
        answers = generate_answers(model, fmt, questions, sampled, ec.batch_size, device,
                                   progress_desc=f"{what} (sample {i + 1}/{ec.samples})")
        for t, a in zip(tasks, answers):
            out[t.task_id].append(a)
    return out


def _with_adapters(base, adapters: list[str], adapter_names: list[str] | None):
    """The base with every adapter attached (a PeftModel when there is one), and their unique names."""
    model, names = base, []
    for i, adapter in enumerate(adapters):
        name = (adapter_names[i] if adapter_names else Path(adapter).name) or f"adapter{i}"
        if name in names or name == "base":
            name = f"{name}-{i}"
        model = load_adapter(model, adapter, adapter_name=name)
        names.append(name)
    return model, names


def evaluate_models(tasks: list[Task], model_cfg: ModelConfig, adapters: list[str], out: Path, ec: EvalConfig,
                    gen: GenerateConfig, device: str, seed: int = 0, adapter_names: list[str] | None = None,
                    ggufs: list[str] = (), include_base: bool = True) -> dict:
    """pass@k of the base model (unless not `include_base`), each adapter and each GGUF file (in
    llama.cpp) on `tasks`; writes the reports into `out`."""
    dev = pick_device(device)
    precision = precision_for(ec.precision, model_cfg, dev)
    base, tokenizer, _ = load_base(model_cfg, dev, dtype=precision.dtype)
    fmt = PromptFormat(tokenizer)
    model, names = _with_adapters(base, adapters, adapter_names)
    limits = Limits.of(ec)
    entries, all_results, answers = {}, {}, {}
    t0 = time.perf_counter()
    files = _gguf_models(ggufs, fmt, tasks, gen, ["base", *names])
    for name in ["base"] * (include_base or not names) + [*names, *files]:
        ctx = model.disable_adapter() if name == "base" and names else contextlib.nullcontext()
        if name in names:
            model.set_adapter(name)
        say(f"{name}: generating {ec.samples} answer(s) for {len(tasks)} tasks ...")
        with ctx:
            answers[name] = _generate(files.get(name, model), fmt, tasks, ec, gen, dev, seed, name)
        say(f"{name}: running {sum(len(v) for v in answers[name].values())} samples in the sandbox ...")
        results = execute(tasks, answers[name], limits, from_chat=True, desc=f"{name}: running")
        entries[name] = (summarize(results, _ks(ec.samples)), results)
        all_results[name] = results
    report = _report(entries, tasks, limits, time.perf_counter() - t0)
    report.update({"model": model_cfg.name, "adapters": dict(zip(names, adapters)),
                   "gguf": {name: str(f.path) for name, f in files.items()}, "samples_per_task": ec.samples,
                   "temperature": ec.sample_temperature if ec.samples > 1 else 0.0,
                   "max_new_tokens": gen.max_new_tokens, "precision": precision.record()})
    _write(report, all_results, out, answers)
    return report


def _gguf_models(paths: list[str], fmt, tasks: list[Task], gen: GenerateConfig, taken: list[str]) -> dict:
    """{name: GgufModel} for each file (named by its stem), with room for the longest prompt + answer."""
    longest = max((len(fmt.prompt_ids(t.instruction)) for t in tasks), default=0) + gen.max_new_tokens
    files: dict = {}
    for path in paths:
        name = Path(path).stem
        while name in files or name in taken:
            name += "'"
        files[name] = GgufModel(path, n_ctx=context_for(longest, path), tokenizer=fmt.tok)
    return files


def _report(entries: dict, tasks: list[Task], limits: Limits, seconds: float) -> dict:
    return {
        "suite": tasks[0].kind if tasks else "",
        "tasks": len(tasks),
        "isolation": isolation(),
        "limits": vars(limits),
        "seconds": round(seconds, 1),
        "models": {name: summary for name, (summary, _) in entries.items()},
    }


def _write(report: dict, results: dict[str, list[TaskResult]], out: Path, answers: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / EXEC_REPORT, report)
    write_text_atomic(out / EXEC_REPORT_MD, render_exec_markdown(report))
    plot_pass_at_1(report, out / EXEC_CHART)
    for name, res in results.items():
        write_text_atomic(out / exec_samples(name), results_to_jsonl(res))
    if answers:
        write_text_atomic(out / EXEC_ANSWERS, json.dumps(answers, indent=1, ensure_ascii=False))


def render_exec_markdown(report: dict) -> str:
    models = report["models"]
    ks = sorted({int(k[5:]) for m in models.values() for k in m if k.startswith("pass@") and k[5:].isdigit()})
    head = "| model | tasks | samples | " + " | ".join(f"pass@{k}" for k in ks) + " | pass@1 95% CI | passed | failed | timeout |"
    lines = [f"# Execution evaluation: {report['suite']} ({report['tasks']} tasks)", "",
             f"Sandbox isolation: {report['isolation']}; limits: "
             + ", ".join(f"{k}={v}" for k, v in report["limits"].items()) + ".", "",
             head, "| --- |" + " ---: |" * (len(ks) + 6)]
    for name, m in models.items():
        lo, hi = m["pass@1_ci95"]
        lines.append(f"| {name} | {m['tasks']} | {m['samples']} | "
                     + " | ".join(f"{m.get(f'pass@{k}', float('nan')):.3f}" for k in ks)
                     + f" | {lo:.3f}-{hi:.3f} | {m['status']['passed']} | {m['status']['failed']} | {m['status']['timeout']} |")
    lines += ["", "pass@k: the unbiased estimator over n samples per task; the interval is a 95% bootstrap over tasks.",
              "Per-sample outcomes: exec_samples_<model>.jsonl.", ""]
    return "\n".join(lines)


def plot_pass_at_1(report: dict, path: Path) -> None:
    names = list(report["models"])
    vals = [report["models"][n].get("pass@1", 0.0) for n in names]
    err = [[v - report["models"][n]["pass@1_ci95"][0] for n, v in zip(names, vals)],
           [report["models"][n]["pass@1_ci95"][1] - v for n, v in zip(names, vals)]]
    fig, ax = pyplot().subplots(figsize=(max(4, 1.6 * len(names) + 2), 4), dpi=110)
    ax.bar(names, vals, yerr=err, capsize=6, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax.set_ylim(0, 1)
    ax.set_ylabel("pass@1 (95% CI)")
    ax.set_title(f"pass@1 on {report['suite']} ({report['tasks']} tasks)")
    save_figure(fig, path)


def load_suite(spec: str, limit: int | None = None) -> list[Task]:
    """'humaneval' or a tasks JSONL path."""
    return humaneval_tasks(limit) if spec == "humaneval" else load_tasks_file(spec, limit)


def require_execution_flag(allowed: bool) -> None:
    if not allowed:
        raise CodeloraError(EXECUTION_FLAG_MESSAGE)
