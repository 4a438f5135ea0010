"""`codelora eval`: from what was asked (a run directory, a suite or tasks file, adapters, a base
model, completions) to which evaluation runs, on which base model, and where its reports go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codelora.config import EvalCommandConfig, EvalConfig, GenerateConfig, ModelConfig, TrainConfig, section
from codelora.errors import CodeloraError
from codelora.evaluation.compare import render_markdown
from codelora.evaluation.exec_eval import evaluate_models, render_exec_markdown, require_execution_flag, \
    score_completions
from codelora.evaluation.execution import humaneval_tasks, load_tasks_file
from codelora.evaluation.run_eval import evaluate_run
from codelora.evaluation.sandbox import Limits
from codelora.models.adapters import base_model_of


@dataclass
class EvalRequest:
    """The inputs `codelora eval` was given (its flags)."""

    run_dir: str | None = None  # text metrics on its test split; with suite / tasks, its adapter is evaluated
    suite: str | None = None  # "humaneval"
    tasks: str | None = None  # a tasks JSONL file
    completions: str | None = None  # score these answers instead of a model's
    adapters: list[str] = field(default_factory=list)
    model: str | None = None  # the base model; default: the first adapter's base
    out: str | None = None  # default: run_dir, else EvalCommandConfig.out
    ggufs: list[str] = field(default_factory=list)  # GGUF files evaluated beside the others
    allow_code_execution: bool = False
    overrides: dict[str, object] = field(default_factory=dict)  # dotted eval./generate. fields from flags


@dataclass
class EvalResult:
    report: dict
    execution: bool  # True: pass@k by running code (exec_report.*); False: a run's text metrics
    out: Path  # the folder the reports went to

    def markdown(self) -> str:
        return render_exec_markdown(self.report) if self.execution else render_markdown(self.report)


def evaluate(req: EvalRequest) -> EvalResult:
    """Run the evaluation `req` asks for; inputs are checked before anything runs."""
    if not (req.suite or req.tasks):
        if req.completions or req.adapters:
            raise CodeloraError("--completions and --adapter go with --suite humaneval or --tasks FILE")
        if not req.run_dir:
            raise CodeloraError("give a RUN_DIR (text metrics on its test split) or --suite humaneval / --tasks FILE")
        return EvalResult(evaluate_run(req.run_dir, req.overrides, ggufs=req.ggufs), False, Path(req.run_dir))
    if req.completions and req.ggufs:
        raise CodeloraError("--completions scores given answers; it does not go with --gguf")
    if req.suite and req.tasks:
        raise CodeloraError("choose one of --suite humaneval and --tasks FILE")
    ec, gen = section(EvalConfig, req.overrides, "eval."), section(GenerateConfig, req.overrides, "generate.")
    tasks = humaneval_tasks(ec.limit) if req.suite else load_tasks_file(req.tasks, ec.limit)
    adapters = list(req.adapters) + ([req.run_dir] if req.run_dir else [])
    out = report_dir(req)
    require_execution_flag(req.allow_code_execution)  # after the inputs are checked, before anything runs
    if req.completions:
        return EvalResult(score_completions(tasks, req.completions, out, Limits.of(ec)), True, out)
    report = evaluate_models(tasks, base_model(req.model, adapters), adapters, out, ec, gen, TrainConfig.device,
                             ggufs=req.ggufs)
    return EvalResult(report, True, out)


def report_dir(req: EvalRequest) -> Path:
    """--out; else the run directory; else EvalCommandConfig.out for the suite or tasks file."""
    name = req.suite or Path(req.tasks or "tasks").stem
    return Path(req.out or req.run_dir or EvalCommandConfig.out.format(name=name))


def base_model(model: str | None, adapters: list[str]) -> ModelConfig:
    """--model; else the base the first adapter was trained on; else the embedded model."""
    if model:
        return ModelConfig(name=model)
    if adapters:
        return base_model_of(Path(adapters[0]))
    return ModelConfig()
