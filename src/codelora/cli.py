"""The `codelora` command line: parse the flags, then call one library function per subcommand.

    codelora run CONFIG.yaml [overrides] [--resume]   train, then evaluate (experiments.run)
    codelora train [--config FILE] [overrides]        train only (experiments.run)
    codelora data report|prepare --out DIR            EDA report / clean + split (data.prepare)
    codelora eval RUN_DIR | --suite humaneval | --tasks FILE   (evaluation.eval_command)
    codelora ask "question" [--adapter RUN_DIR]       (serving.ask)
    codelora merge RUN_DIR --out DIR                  (export.merge)
    codelora export RUN_DIR --format gguf --out DIR   GGUF for llama.cpp / Ollama (export.gguf_export)
    codelora export RUN_DIR --format vllm --out DIR   the adapter for vLLM, checked (export.vllm_export)
    codelora serve [--adapters DIR]                   (serving.server)
    codelora launch [--nnodes N ...] train|run ...    several processes / machines (training.launch)
    codelora sweep SWEEP.yaml                         (experiments.sweep)
    codelora improve IMPROVE.yaml                     learn from execution (experiments.improve)

Every flag that sets a setting is derived from its config field (codelora/config.py): its help,
choices and default come from there. `--quiet`, before or after any subcommand, turns off the
progress bars and messages. Errors caused by input print one line,
`codelora: error: ...`, and exit 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import types
import typing
import warnings
from pathlib import Path

from codelora.config import (EvalCommandConfig, ExportConfig, GenerateConfig, LaunchConfig, MergeConfig, RunConfig,
                             ServeConfig, TrainConfig, field_help, resolve_field, section, validated)
from codelora.config_parse import load_config_file, parse_assignment, parse_config, set_dotted
from codelora.console import say, set_quiet
from codelora.errors import CodeloraError, TrainingStopped, first_line

# flag -> the config field it sets (dotted, below the section class named in FLAG_TABLES)
RUN_FLAGS = {
    "--model": "model.name", "--data": "data.source", "--out": "out", "--limit": "data.limit", "--seed": "seed",
    "--epochs": "train.epochs", "--max-steps": "train.max_steps", "--batch-size": "train.batch_size",
    "--lr": "train.lr", "--method": "train.method", "--task": "model.task", "--lora-r": "lora.r",
    "--lora-alpha": "lora.alpha", "--lora-dropout": "lora.dropout", "--save-every": "train.save_every",
    "--quantize": "model.quantize", "--trust-remote-code": "model.trust_remote_code",
}
EVAL_FLAGS = {"--limit": "eval.limit", "--batch-size": "eval.batch_size", "--max-new-tokens": "generate.max_new_tokens",
              "--samples": "eval.samples", "--temperature": "eval.sample_temperature", "--timeout": "eval.timeout",
              "--precision": "eval.precision", "--sandbox-memory-mb": "eval.sandbox_memory_mb",
              "--sandbox-processes": "eval.sandbox_processes", "--sandbox-file-mb": "eval.sandbox_file_mb"}
ASK_FLAGS = {"--max-new-tokens": "generate.max_new_tokens", "--temperature": "generate.temperature",
             "--top-p": "generate.top_p", "--device": "train.device", "--precision": "train.precision"}
SERVE_FLAGS = {"--" + name.replace("_", "-"): name for name in ServeConfig.__dataclass_fields__}
MERGE_FLAGS = {"--" + name.replace("_", "-"): name for name in MergeConfig.__dataclass_fields__}
EXPORT_FLAGS = {"--" + name.replace("_", "-"): name for name in ExportConfig.__dataclass_fields__}
LAUNCH_FLAGS = {"--" + name.replace("_", "-"): name for name in LaunchConfig.__dataclass_fields__}


QUIET_HELP = "no progress bars or progress messages (errors and results still print)"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"codelora: error: {message} (see {self.prog} --help)\n")


class SubParser(Parser):
    """Every subcommand's parser (nested ones too) accepts --quiet. SUPPRESS: a subcommand that is
    not given --quiet leaves the namespace alone, so a top-level `codelora --quiet ...` survives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _scalar(tp):
    """int for `int | None`, str for `list[str] | str`, ...: what argparse converts a flag to."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None) and typing.get_origin(a) is None]
        return args[0] if args else str
    return tp


def add_flags(group, flags: dict[str, str], root: type = RunConfig) -> None:
    """One flag per config field: type, choices, help and shown default all from the field."""
    for flag, dotted in flags.items():
        cls, name = resolve_field(dotted, root)
        help_, choices, default = field_help(cls, name)
        tp = _scalar(typing.get_type_hints(cls)[name])
        if tp is bool:
            group.add_argument(flag, dest=_dest(flag), action="store_true", default=None, help=help_)
        else:
            shown = "" if default in (None, "") or name == "api_key" else f" (default: {default})"
            group.add_argument(flag, dest=_dest(flag), type=tp, choices=choices, default=None,
                               help=help_.replace("%", "%%") + shown)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("overrides (win over the config file)"), RUN_FLAGS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set lora.target_modules=all-linear (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest verified checkpoint (same command + --resume)")
    p.add_argument("--allow-partial-resume", action="store_true",
                   help="with --resume, accept a checkpoint without optimizer or RNG state (results will differ)")


def _add_run_dir_command(sub, name: str, help_: str, run_dir_help: str, out_help: str, flags: dict, cls: type) -> None:
    """A subcommand that turns a run directory into a new output directory (merge, export)."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("run_dir", help=run_dir_help)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_flags(p, flags, cls)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="codelora", description="Fine-tune language models with LoRA into Python code assistants.")
    parser.add_argument("--version", action="version", version=f"codelora {__import__('codelora').__version__}")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=SubParser)

    p = sub.add_parser("train", help="fine-tune (per train.method: LoRA adapters, full, top-K) into a run directory")
    p.add_argument("--config", help="YAML config (see configs/)")
    _add_run_flags(p)
    _add_resume(p)

    p = sub.add_parser("run", help="train, then evaluate base vs tuned model on the test split")
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="allow eval.tasks to run model-generated code (sandboxed)")
    _add_run_flags(p)
    _add_resume(p)

    p = sub.add_parser("data", help="data report (EDA) and data prepare (clean, dedup, split)")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=SubParser)
    for name, text in (("report", "write report.md, stats.json and charts about a dataset"),
                       ("prepare", "validate, clean and split into train/validation/test.jsonl")):
        q = data_sub.add_parser(name, help=text)
        q.add_argument("--config", help="YAML config; its data section (and model, for the tokenizer) is used")
        _add_run_flags(q)

    p = sub.add_parser("eval", help="base vs adapter(s): text metrics on a run's test split, or pass@k by "
                                    "running generated code (HumanEval or a tasks file) in a sandbox")
    p.add_argument("run_dir", nargs="?", help="a run directory: text metrics on its test split (and, with --suite "
                                              "or --tasks, its adapter is evaluated)")
    p.add_argument("--suite", choices=["humaneval"], help="the 164 HumanEval problems")
    p.add_argument("--tasks", help="JSONL of task_id, instruction, entry_point, test")
    p.add_argument("--completions", help="score these completions (task_id, completion) instead of a model")
    p.add_argument("--adapter", action="append", default=[], help="adapter run directory to compare (repeatable)")
    p.add_argument("--model", help="base model (default: the adapter's base, else smollm2-135m)")
    add_flags(p, {"--out": "out"}, EvalCommandConfig)
    p.add_argument("--allow-code-execution", action="store_true",
                   help="required to run model-generated code (in a sandboxed process)")
    p.add_argument("--gguf", action="append", default=[], metavar="FILE",
                   help="an exported GGUF file to evaluate beside the others, in llama.cpp (repeatable)")
    add_flags(p, EVAL_FLAGS)

    p = sub.add_parser("ask", help="answer a Python question with the base model or an adapter")
    p.add_argument("question")
    p.add_argument("--adapter", help="a run directory (or any peft adapter folder)")
    p.add_argument("--model", help="base model; default: the adapter's base, else smollm2-135m")
    p.add_argument("--gguf", metavar="FILE", help="answer with this GGUF file in llama.cpp instead")
    p.add_argument("--gguf-lora", metavar="FILE", help="with --gguf: a GGUF LoRA (codelora export --format gguf-lora) "
                                                       "to apply on it")
    add_flags(p, ASK_FLAGS)

    _add_run_dir_command(sub, "merge", "fold an adapter into its base model (full safetensors model), after a "
                         "merged-vs-adapter parity check", "a run directory (or any peft adapter folder)",
                         "directory for the merged model", MERGE_FLAGS, MergeConfig)
    _add_run_dir_command(sub, "export", "a run as GGUF files for llama.cpp and Ollama (with a Modelfile), checked "
                         "against the PyTorch model in llama.cpp; or (--format vllm) its adapter checked against "
                         "vLLM's LoRA rules, with the vllm serve command",
                         "a run directory (an adapter, or the whole model of a full / top-K run)",
                         "directory for the GGUF files, Modelfile and export_report.json (vllm: the adapter, "
                         "vllm_serve.sh, load_lora_adapter.json)", EXPORT_FLAGS, ExportConfig)

    p = sub.add_parser("serve", help="HTTP API and web page: one base model, adapters chosen per request")
    p.add_argument("--adapters", help="directory with one adapter folder (run directory) per name")
    p.add_argument("--model", help="base model; default: the adapters' base, else smollm2-135m")
    add_flags(p, SERVE_FLAGS, ServeConfig)

    p = sub.add_parser("launch", help="train or run in several processes or on several machines (torchrun's "
                                      "launcher, bounded waits, one-line failures)")
    add_flags(p, LAUNCH_FLAGS, LaunchConfig)
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="train|run ...",
                   help="the codelora command every process runs, e.g. train --config configs/demo.yaml "
                        "--set train.distributed=fsdp")

    p = sub.add_parser("sweep", help="run a grid of configs (rank, targets, layers, lr, ...) one cell after another; "
                                     "restarting skips finished cells; writes sweep.csv, sweep.json and plots")
    p.add_argument("sweep_file", help="sweep YAML, e.g. configs/sweeps/rank.yaml")

    p = sub.add_parser("improve", help="learn from execution: rounds of sampling answers to tasks with tests, "
                                       "running them in the sandbox and training on the passing ones; rerun to "
                                       "continue after an interruption")
    p.add_argument("config", help="improve YAML, e.g. configs/improve.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set an improve field (rounds=1) or a training override (set.train.lr=1e-4); repeatable")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="required: every sampled answer runs as a sandboxed process")
    p.add_argument("--overwrite", action="store_true", help="start over when OUT holds another improve run")
    return parser


# -- from flags to config ------------------------------------------------------------------------


def given(args, flags: dict[str, str]) -> dict[str, object]:
    """{dotted field: value} for the flags the user gave."""
    return {dotted: getattr(args, _dest(flag)) for flag, dotted in flags.items()
            if getattr(args, _dest(flag), None) is not None}


def run_config(args, config_path: str | None) -> RunConfig:
    data = load_config_file(config_path) if config_path else {}
    for key, value in given(args, RUN_FLAGS).items():
        set_dotted(data, key, value)
    for assignment in args.set:
        set_dotted(data, *parse_assignment(assignment))
    return parse_config(data)


# -- subcommands ----------------------------------------------------------------------------------


def cmd_run(args) -> int:
    cfg = run_config(args, args.config)  # config errors come back before training's libraries load
    from codelora.experiments.run import RunOptions, run

    opts = RunOptions(evaluate=args.command == "run", overwrite=args.overwrite, resume=args.resume,
                      allow_partial_resume=args.allow_partial_resume,
                      allow_code_execution=getattr(args, "allow_code_execution", False))
    try:
        result = run(cfg, opts)
    except TrainingStopped as stopped:
        say(f"{stopped}; checkpoint written to {stopped.checkpoint}")
        say(f"resume with: {_resume_command()}")
        return 0
    except (Exception, KeyboardInterrupt) as e:
        if getattr(e, "__notes__", None):  # checkpoints were kept
            e.add_note(f"resume with: {_resume_command()}")
        raise
    if result.run_dir is None:
        return 0
    from codelora.evaluation.compare import render_markdown
    from codelora.evaluation.exec_eval import render_exec_markdown

    if result.report:
        print(render_markdown(result.report))
    if result.exec_report:
        print(render_exec_markdown(result.exec_report))
    say(f"wrote {cfg.out}")
    if cfg.model.task == "causal-lm" and cfg.train.method != "none":  # an adapter, or a whole tuned model
        flag = "--adapter" if cfg.train.method == "lora" else "--model"
        say(f"try it: codelora ask \"Write a Python function that reverses a string\" {flag} {cfg.out}")
    return 0


def _resume_command() -> str:
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    command = shlex.join(["codelora", *argv, "--resume"])
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # one process of torchrun / accelerate launch / codelora launch
        return f"the launcher's command (torchrun, accelerate or codelora launch) with --resume; this process " \
               f"ran {command}"
    return command


def cmd_data(args) -> int:
    from codelora.data.prepare import data_prepare, data_report

    if not args.out:
        raise CodeloraError(f"codelora data {args.data_command} needs --out DIR")
    cfg = run_config(args, args.config)
    if args.data_command == "prepare":
        data_prepare(cfg, args.out, overwrite=args.overwrite)
        return 0
    from codelora.models.sources import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.model.trust_remote_code)
    data_report(cfg, args.out, tokenizer, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from codelora.evaluation.eval_command import EvalRequest, evaluate

    result = evaluate(EvalRequest(
        run_dir=args.run_dir, suite=args.suite, tasks=args.tasks, completions=args.completions, adapters=args.adapter,
        model=args.model, out=args.out, ggufs=args.gguf, allow_code_execution=args.allow_code_execution,
        overrides=given(args, EVAL_FLAGS)))
    print(result.markdown())
    if result.execution:
        say(f"wrote {result.out}/exec_report.md, exec_report.json, exec_pass_at_1.png")
    if args.run_dir and result.out == Path(args.run_dir):
        _update_card(args.run_dir)
    return 0


def _update_card(run_dir: str) -> None:
    """The run's model card shows its newest evaluation."""
    from codelora.experiments.card import write_model_card
    from codelora.io.rundir import RunDir

    if RunDir(run_dir).is_complete():
        write_model_card(Path(run_dir), Path(run_dir).name)


def cmd_ask(args) -> int:
    from codelora.serving.ask import ask

    values = given(args, ASK_FLAGS)
    run = validated(TrainConfig(device=values.pop("train.device", TrainConfig.device),
                                precision=values.pop("train.precision", TrainConfig.precision)))
    gen = section(GenerateConfig, values, "generate.")
    if args.gguf or args.gguf_lora:
        from codelora.serving.ask import ask_gguf

        if args.adapter or args.model:
            raise CodeloraError("--gguf answers with the GGUF file alone; it does not go with --adapter or --model")
        if args.gguf_lora and not args.gguf:
            raise CodeloraError("--gguf-lora needs --gguf BASE.gguf (the model it applies to)")
        ask_gguf(args.question, args.gguf, gen, lora=args.gguf_lora)
        return 0
    ask(args.question, adapter=args.adapter, model=args.model, gen=gen, device=run.device, precision=run.precision,
        stream=True)
    return 0


def cmd_merge(args) -> int:
    from codelora.export.merge import merge

    merge(args.run_dir, args.out, section(MergeConfig, given(args, MERGE_FLAGS)), overwrite=args.overwrite)
    return 0


def cmd_export(args) -> int:
    ec = section(ExportConfig, given(args, EXPORT_FLAGS))
    if ec.format == "vllm":
        from codelora.export.vllm_export import export
    else:
        from codelora.export.gguf_export import export

    export(args.run_dir, args.out, ec, overwrite=args.overwrite)
    return 0


def cmd_serve(args) -> int:
    from codelora.serving.server import serve

    serve(args.adapters, section(ServeConfig, given(args, SERVE_FLAGS)), args.model)
    return 0


def cmd_launch(args) -> int:
    lc = section(LaunchConfig, given(args, LAUNCH_FLAGS))
    inner = args.inner[1:] if args.inner[:1] == ["--"] else args.inner
    if inner[:1] not in (["train"], ["run"]):
        raise CodeloraError(f"codelora launch runs train or run, e.g. codelora launch --nproc-per-node 2 train "
                            f"--config configs/demo.yaml; got {' '.join(inner) or 'nothing'}")
    inner_args = build_parser().parse_args(inner)
    cfg = run_config(inner_args, inner_args.config)  # a bad config fails here, before any process starts
    from codelora.training.launch import launch

    stopped = launch(lc, inner, Path(cfg.out))
    if stopped:
        say(stopped)
        say(f"resume with: {_resume_command()}")
    return 0


def cmd_sweep(args) -> int:
    from codelora.experiments.sweep import run_sweep

    sweep = run_sweep(args.sweep_file, say=say)
    say(f"wrote {sweep.out}/sweep.csv, sweep.json and plots ({len(sweep.results)} cells)")
    return 0


def cmd_improve(args) -> int:
    from codelora.experiments.improve import improve, load_improve_config

    cfg = load_improve_config(args.config, [parse_assignment(a) for a in args.set])
    improve(cfg, allow_code_execution=args.allow_code_execution, overwrite=args.overwrite)
    return 0


COMMANDS = {"train": cmd_run, "run": cmd_run, "data": cmd_data, "eval": cmd_eval, "ask": cmd_ask,
            "merge": cmd_merge, "export": cmd_export, "serve": cmd_serve, "launch": cmd_launch, "sweep": cmd_sweep,
            "improve": cmd_improve}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        set_quiet(True)  # in the environment: the processes this command starts stay quiet too
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    # SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C, so staged run directories are removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return COMMANDS[args.command](args)
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
