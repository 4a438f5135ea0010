"""The `codelora` command line: a thin layer that maps each subcommand to one function.

    codelora train [--config FILE] [--model M] [--data SRC] [--out DIR] ...
    codelora run CONFIG.yaml [overrides] [--resume]
    codelora eval RUN_DIR
    codelora ask "question" [--adapter RUN_DIR]
    codelora merge RUN_DIR --out DIR
    codelora serve [--adapters DIR] [--host 127.0.0.1] [--port 8000]
    codelora sweep SWEEP.yaml

Errors caused by input print one line, `codelora: error: ...`, and exit 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import warnings

from codelora.errors import CodeloraError, first_line
from codelora.models.merge import ParityThresholds as ParityDefaults
from codelora.serving.settings import API_KEY_ENV, ServerSettings as ServerDefaults

# flag -> dotted config field; every default lives in codelora/config.py
OVERRIDES = {
    "model": "model.name",
    "data": "data.source",
    "out": "out",
    "limit": "data.limit",
    "seed": "seed",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "save_every": "train.save_every",
    "trust_remote_code": "model.trust_remote_code",
    "quantize": "model.quantize",
    "method": "train.method",
    "task": "model.task",
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"codelora: error: {message} (see {self.prog} --help)\n")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overrides (win over the config file)")
    g.add_argument("--model", help="embedded 'smollm2-135m' (default), a local model directory, or a Hub id")
    g.add_argument("--data", help="Hub dataset id or local .json/.jsonl/.parquet/.csv file")
    g.add_argument("--out", help="run directory to write")
    g.add_argument("--limit", type=int, help="use only the first N rows")
    g.add_argument("--seed", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--method", help="what trains: lora (default), full, top-K (e.g. top-2) or none (baseline)")
    g.add_argument("--task", choices=["causal-lm", "seq2seq", "classification"],
                   help="model kind: causal-lm (default), seq2seq (T5/CodeT5) or classification (BERT-style)")
    g.add_argument("--lora-r", type=int)
    g.add_argument("--lora-alpha", type=float)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N optimizer steps (0: only when stopped)")
    g.add_argument("--quantize", choices=["none", "8bit", "4bit"],
                   help="load the base model quantized (bitsandbytes; CUDA GPUs only): QLoRA with 4bit")
    g.add_argument("--trust-remote-code", action="store_true", default=None,
                   help="allow a Hub model to run its own Python code (off by default)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set lora.target_modules=all-linear (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest verified checkpoint (same command + --resume)")
    p.add_argument("--allow-partial-resume", action="store_true",
                   help="with --resume, accept a checkpoint without optimizer or RNG state (results will differ)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="codelora", description="Fine-tune language models with LoRA into Python code assistants.")
    parser.add_argument("--version", action="version", version=f"codelora {__import__('codelora').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="fine-tune a LoRA adapter; writes a run directory")
    p.add_argument("--config", help="YAML config (see configs/)")
    _add_overrides(p)
    _add_resume(p)

    p = sub.add_parser("run", help="train, then evaluate base vs adapter on the test split")
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="allow eval.tasks to run model-generated code (sandboxed)")
    _add_overrides(p)
    _add_resume(p)

    p = sub.add_parser("data", help="data report (EDA) and data prepare (clean, dedup, split)")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    for name, text in (("report", "write report.md, stats.json and charts about a dataset"),
                       ("prepare", "validate, clean and split into train/validation/test.jsonl")):
        q = data_sub.add_parser(name, help=text)
        q.add_argument("--config", help="YAML config; its data section (and model, for the tokenizer) is used")
        _add_overrides(q)

    p = sub.add_parser("eval", help="base vs adapter(s): text metrics on a run's test split, or pass@k by "
                                    "running generated code (HumanEval or a tasks file) in a sandbox")
    p.add_argument("run_dir", nargs="?", help="a run directory: text metrics on its test split (and, with --suite "
                                              "or --tasks, its adapter is evaluated)")
    p.add_argument("--suite", choices=["humaneval"], help="the 164 HumanEval problems")
    p.add_argument("--tasks", help="JSONL of task_id, instruction, entry_point, test")
    p.add_argument("--completions", help="score these completions (task_id, completion) instead of a model")
    p.add_argument("--adapter", action="append", default=[], help="adapter run directory to compare (repeatable)")
    p.add_argument("--model", help="base model (default: the adapter's base, else smollm2-135m)")
    p.add_argument("--samples", type=int, default=1, help="samples per task (pass@k for k <= samples)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --samples > 1")
    p.add_argument("--limit", type=int, help="only the first N tasks / test rows")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per sample in the sandbox")
    p.add_argument("--out", help="where execution reports go (default: RUN_DIR, else runs/eval-SUITE)")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="required to run model-generated code (in a sandboxed process)")

    p = sub.add_parser("ask", help="answer a Python question with the base model or an adapter")
    p.add_argument("question")
    p.add_argument("--adapter", help="a run directory (or any peft adapter folder)")
    p.add_argument("--model", help="base model; default: the adapter's base, else smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("merge", help="fold an adapter into its base model (full safetensors model), "
                                     "after a merged-vs-adapter parity check")
    p.add_argument("run_dir", help="a run directory (or any peft adapter folder)")
    p.add_argument("--out", required=True, help="directory for the merged model")
    p.add_argument("--max-abs-diff", type=float, default=ParityDefaults.max_abs_diff,
                   help="largest allowed |merged - adapter| logit on the probe prompts (default %(default)g)")
    p.add_argument("--max-kl", type=float, default=ParityDefaults.max_kl,
                   help="largest allowed KL(adapter || merged) per position (default %(default)g)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")

    p = sub.add_parser("serve", help="HTTP API and web page: one base model, adapters chosen per request")
    p.add_argument("--adapters", help="directory with one adapter folder (run directory) per name")
    p.add_argument("--model", help="base model; default: the adapters' base, else smollm2-135m")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs an API key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help=f"require this key (prefer the environment variable {API_KEY_ENV})")
    p.add_argument("--max-queue", type=int, default=ServerDefaults.max_queue,
                   help="requests admitted at once, running or waiting; more get 429 (default %(default)s)")
    p.add_argument("--max-new-tokens-limit", type=int, default=ServerDefaults.max_new_tokens_limit)
    p.add_argument("--max-body-bytes", type=int, default=ServerDefaults.max_body_bytes)
    p.add_argument("--log-prompts", action="store_true", help="write prompts and answers to the log (off by default)")
    p.add_argument("--lazy", action="store_true", help="load adapters on first use instead of at start")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("sweep", help="run a grid of configs (rank, targets, layers, lr, ...) one cell after another; "
                                     "restarting skips finished cells; writes sweep.csv, sweep.json and plots")
    p.add_argument("sweep_file", help="sweep YAML, e.g. configs/sweeps/rank.yaml")
    return parser


def _config_from_args(args, config_path: str | None):
    from codelora.config import load_config_file, parse_assignment, parse_config, set_dotted

    data = load_config_file(config_path) if config_path else {}
    for flag, key in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_dotted(data, key, value)
    for assignment in args.set:
        set_dotted(data, *parse_assignment(assignment))
    return parse_config(data)


def _dispatch(args) -> int:
    if args.command in ("train", "run"):
        return _train_or_run(args)
    if args.command == "data":
        from codelora.data.prepare import data_prepare, data_report

        if not args.out:
            raise CodeloraError(f"codelora data {args.data_command} needs --out DIR")
        cfg = _config_from_args(args, args.config)
        (data_report if args.data_command == "report" else data_prepare)(cfg, args.out, overwrite=args.overwrite)
        return 0
    if args.command == "eval":
        return _eval(args)
    if args.command == "ask":
        from codelora.serving.ask import ask

        ask(args.question, adapter=args.adapter, model=args.model, max_new_tokens=args.max_new_tokens,
            device=args.device, stream=True)
        return 0
    if args.command == "merge":
        from codelora.models.merge import ParityThresholds, merge

        for flag in ("max_abs_diff", "max_kl"):
            value = getattr(args, flag)
            if not value >= 0:  # also catches NaN
                raise CodeloraError(f"--{flag.replace('_', '-')} must be a number >= 0, got {value}")
        merge(args.run_dir, args.out, ParityThresholds(args.max_abs_diff, args.max_kl), overwrite=args.overwrite,
              device=args.device)
        return 0
    if args.command == "serve":
        from codelora.serving.server import serve

        settings = ServerDefaults(max_queue=args.max_queue, max_new_tokens_limit=args.max_new_tokens_limit,
                                  max_body_bytes=args.max_body_bytes, api_key=args.api_key,
                                  log_prompts=args.log_prompts)
        serve(args.adapters, args.host, args.port, args.model, args.device, settings, preload=not args.lazy)
        return 0
    if args.command == "sweep":
        from codelora.experiments.sweep import run_sweep

        sweep = run_sweep(args.sweep_file, say=lambda m: print(f"codelora: {m}", file=sys.stderr, flush=True))
        print(f"codelora: wrote {sweep.out}/sweep.csv, sweep.json and plots ({len(sweep.results)} cells)",
              file=sys.stderr)
        return 0
    raise AssertionError(args.command)


def _resume_command() -> str:
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    return shlex.join(["codelora", *argv, "--resume"])


def _train_or_run(args) -> int:
    from pathlib import Path

    from codelora.console import say
    from codelora.errors import TrainingStopped
    from codelora.io.rundir import partial_dir, staged_run_dir
    from codelora.training.train import train

    cfg = _config_from_args(args, args.config)
    if args.allow_partial_resume and not args.resume:
        raise CodeloraError("--allow-partial-resume goes with --resume")
    partial = partial_dir(cfg.out)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun / accelerate: rank 0 owns the run directory
        try:
            train(cfg, partial, resume=args.resume, allow_partial_resume=args.allow_partial_resume)
        except TrainingStopped:
            pass
        return 0
    if args.resume and (Path(cfg.out) / "manifest.json").is_file() and not partial.exists():
        say(f"{cfg.out} is already complete; nothing to resume")
        return 0
    if args.command == "run" and cfg.eval.tasks:  # fail before training, not after
        from codelora.evaluation.exec_eval import load_suite, require_execution_flag

        require_execution_flag(cfg.eval.allow_code_execution or args.allow_code_execution)
        tasks = load_suite(cfg.eval.tasks, cfg.eval.tasks_limit)
    try:
        with staged_run_dir(cfg.out, overwrite=args.overwrite, resume=args.resume) as run_dir:
            trained = train(cfg, run_dir, resume=args.resume, allow_partial_resume=args.allow_partial_resume)
            if args.command == "run":
                from codelora.evaluation.compare import render_markdown
                from codelora.evaluation.run_eval import evaluate_trained

                report = evaluate_trained(trained, cfg)
                print(render_markdown(report))
                if cfg.eval.tasks:
                    from codelora.evaluation.exec_eval import evaluate_models, render_exec_markdown

                    exec_report = evaluate_models(tasks, cfg.model, [str(run_dir)], run_dir,
                                                  max_new_tokens=cfg.eval.max_new_tokens,
                                                  batch_size=cfg.eval.batch_size, device=cfg.train.device,
                                                  adapter_names=["adapter"])
                    print(render_exec_markdown(exec_report))
    except TrainingStopped as stopped:
        say(f"{stopped}; checkpoint written to {stopped.checkpoint}")
        say(f"resume with: {_resume_command()}")
        return 0
    except (Exception, KeyboardInterrupt) as e:
        if partial.is_dir():  # staged_run_dir keeps it only when it holds a checkpoint
            e.add_note(f"checkpoints kept in {partial}; resume with: {_resume_command()}")
        raise
    print(f"codelora: wrote {cfg.out}", file=sys.stderr)
    if cfg.model.task == "causal-lm" and cfg.train.method != "none":  # an adapter, or a whole tuned model
        flag = "--adapter" if cfg.train.method == "lora" else "--model"
        print(f"codelora: try it: codelora ask \"Write a Python function that reverses a string\" {flag} {cfg.out}",
              file=sys.stderr)
    return 0


def _eval(args) -> int:
    from pathlib import Path

    if not (args.suite or args.tasks):
        if args.completions or args.adapter:
            raise CodeloraError("--completions and --adapter go with --suite humaneval or --tasks FILE")
        if not args.run_dir:
            raise CodeloraError("give a RUN_DIR (text metrics on its test split) or --suite humaneval / --tasks FILE")
        from codelora.evaluation.compare import render_markdown
        from codelora.evaluation.run_eval import evaluate_run

        print(render_markdown(evaluate_run(args.run_dir, args.limit, args.max_new_tokens)))
        return 0
    if args.suite and args.tasks:
        raise CodeloraError("choose one of --suite humaneval and --tasks FILE")
    if args.samples < 1:
        raise CodeloraError(f"--samples must be at least 1, got {args.samples}")
    from codelora.evaluation.exec_eval import (evaluate_models, render_exec_markdown, require_execution_flag,
                                               score_completions)
    from codelora.evaluation.execution import humaneval_tasks, load_tasks_file
    from codelora.evaluation.sandbox import Limits

    tasks = humaneval_tasks(args.limit) if args.suite else load_tasks_file(args.tasks, args.limit)
    adapters = list(args.adapter) + ([args.run_dir] if args.run_dir else [])
    out = Path(args.out or (args.run_dir if args.run_dir else f"runs/eval-{args.suite or Path(args.tasks).stem}"))
    require_execution_flag(args.allow_code_execution)  # after the inputs are checked, before anything runs
    limits = Limits(timeout_s=args.timeout, cpu_s=max(1, int(args.timeout)))
    if args.completions:
        report = score_completions(tasks, args.completions, out, limits)
    else:
        from codelora.config import ModelConfig
        from codelora.models.adapters import base_model_of

        model_cfg = ModelConfig(name=args.model) if args.model else (
            base_model_of(Path(adapters[0])) if adapters else ModelConfig())
        report = evaluate_models(tasks, model_cfg, adapters, out, samples=args.samples, temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens or 384, limits=limits)
    print(render_exec_markdown(report))
    print(f"codelora: wrote {out}/exec_report.md, exec_report.json, exec_pass_at_1.png", file=sys.stderr)
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    # SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C, so staged run directories are removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _dispatch(args)
    except CodeloraError as e:
        print(f"codelora: error: {e}", file=sys.stderr)
        return _notes(e, 1)
    except KeyboardInterrupt as e:
        notes = getattr(e, "__notes__", None)
        kept = "; no partial run directory was kept" if args.command in ("train", "run") and not notes else ""
        print(f"codelora: interrupted{kept}", file=sys.stderr)
        return _notes(e, 130)
    except Exception as e:  # a bug or an environment failure (disk full, out of memory): one line
        if os.environ.get("CODELORA_DEBUG"):
            raise
        print(f"codelora: error: {type(e).__name__}: {first_line(e)} (set CODELORA_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return _notes(e, 1)


def _notes(e: BaseException, code: int) -> int:
    """Print what was added to an error on its way up (e.g. how to resume), then return the exit code."""
    for note in getattr(e, "__notes__", []):
        print(f"codelora: {note}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
