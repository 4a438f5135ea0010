"""`codelora run` and `codelora train` as one library function: train into a staged run directory,
then (for `run`) evaluate base vs tuned model on the test split, and pass@1 when `eval.tasks` asks.

    from codelora.config_parse import load_config_file, parse_config
    from codelora.experiments.run import RunOptions, run
    result = run(parse_config(load_config_file("configs/demo.yaml")), RunOptions())

The run directory appears only when everything succeeded. An interruption (TrainingStopped:
SIGTERM or Ctrl-C) leaves `OUT.partial/` with a checkpoint for `resume`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from codelora.config import RunConfig
from codelora.console import say
from codelora.errors import CodeloraError, TrainingStopped
from codelora.evaluation.exec_eval import evaluate_models, load_suite, require_execution_flag
from codelora.evaluation.run_eval import evaluate_trained
from codelora.experiments.card import write_model_card
from codelora.io.rundir import RunDir, partial_dir, staged_run_dir
from codelora.tracking import Trackers, open_trackers
from codelora.training.train import train


@dataclass
class RunOptions:
    """How to run, beside what (the RunConfig)."""

    evaluate: bool = True  # `run`: train, then evaluate; `train`: train only
    overwrite: bool = False  # replace an existing run directory
    resume: bool = False  # continue an interrupted run from its newest verified checkpoint
    allow_partial_resume: bool = False  # accept a checkpoint without optimizer or RNG state
    allow_code_execution: bool = False  # for eval.tasks (also eval.allow_code_execution)


@dataclass
class RunResult:
    run_dir: Path | None  # None when nothing was run (already complete, or a non-zero torchrun rank)
    report: dict | None = None  # eval_report.json
    exec_report: dict | None = None  # exec_report.json (eval.tasks)


def run(cfg: RunConfig, opts: RunOptions) -> RunResult:
    """Train (and evaluate) `cfg` into cfg.out. Raises TrainingStopped when interrupted gracefully."""
    if opts.allow_partial_resume and not opts.resume:
        raise CodeloraError("--allow-partial-resume goes with --resume")
    partial = partial_dir(cfg.out)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun / accelerate: rank 0 owns the run directory
        try:
            train(cfg, partial, resume=opts.resume, allow_partial_resume=opts.allow_partial_resume)
        except TrainingStopped:
            pass
        return RunResult(None)
    if opts.resume and RunDir(cfg.out).is_complete() and not partial.exists():
        say(f"{cfg.out} is already complete; nothing to resume")
        return RunResult(None)
    tasks = _execution_tasks(cfg, opts) if opts.evaluate else None  # fail before training, not after
    trackers = open_trackers(cfg, partial, Path(cfg.out).name)  # a missing extra fails here, before anything runs
    try:
        with staged_run_dir(cfg.out, overwrite=opts.overwrite, resume=opts.resume) as run_dir, \
                reporting(trackers):
            trained = train(cfg, run_dir, resume=opts.resume, allow_partial_resume=opts.allow_partial_resume,
                            trackers=trackers)
            result = RunResult(Path(cfg.out))
            if opts.evaluate and trained.model is None:  # sharded, and too large for this one process
                say(f"evaluation skipped: the model does not fit one process; evaluate with codelora eval "
                    f"{cfg.out} on a machine where it does")
            elif opts.evaluate:
                result.report, result.exec_report = _evaluate(trained, cfg, tasks)
                trackers.log_evaluation(result.report, result.exec_report, _last_step(run_dir))
            write_model_card(run_dir, Path(cfg.out).name)
            trackers.log_artifacts(run_dir)
    except TrainingStopped:
        raise
    except (Exception, KeyboardInterrupt) as e:
        if partial.is_dir():  # staged_run_dir keeps it only when it holds a checkpoint
            e.add_note(f"checkpoints kept in {partial}")
        raise
    return result


@contextlib.contextmanager
def reporting(trackers: Trackers):
    """Close the tracker runs with what happened: FINISHED, KILLED (stopped; resumable) or FAILED."""
    try:
        yield trackers
    except (TrainingStopped, KeyboardInterrupt):
        trackers.finish("KILLED")
        raise
    except BaseException:
        trackers.finish("FAILED")
        raise
    trackers.finish("FINISHED")


def _last_step(run_dir: Path) -> int:
    return RunDir(run_dir).read_manifest()["train"]["steps"]


def _execution_tasks(cfg: RunConfig, opts: RunOptions):
    if not cfg.eval.tasks:
        return None

    require_execution_flag(cfg.eval.allow_code_execution or opts.allow_code_execution)
    return load_suite(cfg.eval.tasks, cfg.eval.tasks_limit)


def _evaluate(trained, cfg: RunConfig, tasks) -> tuple[dict, dict | None]:
    report = evaluate_trained(trained, cfg)
    if not tasks:
        return report, None

    exec_report = evaluate_models(tasks, cfg.model, [str(trained.run_dir)], trained.run_dir, cfg.eval, cfg.generate,
                                  cfg.train.device, adapter_names=["adapter"])
    return report, exec_report
