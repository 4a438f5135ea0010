"""`codelora eval RUN_DIR`: re-create a run's test split and compare the base model with what the
run trained (its adapter, or its whole model for full / top-K runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from codelora.config import RunConfig
from codelora.config_parse import load_config_file, parse_config, set_dotted
from codelora.console import say
from codelora.data.pipeline import encode, task_data
from codelora.data.prompts import format_for, user_message
from codelora.decoding.gguf_model import GgufModel, context_for
from codelora.errors import CodeloraError, DataError
from codelora.evaluation.compare import candidates, compare_models
from codelora.io.rundir import LABELS, MANIFEST, RunDir
from codelora.models.lora import load_adapter
from codelora.models.precision import Precision, precision_for
from codelora.models.sources import load_base, pick_device


def seeded_base(cfg: RunConfig, device: str, labels: list[str] | None, precision: Precision):
    """load_base in `precision` after seeding as `train` does, so a classifier's new head starts as
    the trained one did."""
    import transformers

    transformers.set_seed(cfg.seed)
    return load_base(cfg.model, device, dtype=precision.dtype, labels=labels)


def evaluate_trained(trained, cfg: RunConfig) -> dict:
    """Evaluate what a `train` call just produced (used by `codelora run`), in eval.precision."""
    d = trained.data
    labels = getattr(trained.fmt, "labels", None)
    precision = precision_for(cfg.eval.precision, cfg.model, trained.device)
    model = trained.model
    if trained.method in ("lora", "none") and precision.name != trained.precision:
        # the base was loaded in the training precision (bf16 loses the fp32 weights' low bits):
        # load it again in the evaluation's, with the adapter just saved
        trained.model = model = None
        base = seeded_base(cfg, trained.device, labels, precision)[0]
        model = load_adapter(base, trained.run_dir) if trained.method == "lora" else base
    elif trained.method not in ("lora", "none"):  # a whole model, trained in fp32 weights
        model = model.to(precision.dtype)
    say(f"evaluating in {precision.name} ({precision.reason})")
    return compare_models(candidates(model, trained.method, lambda: seeded_base(cfg, trained.device, labels, precision)[0]),
                          trained.fmt, d.rows_of("test"), d.examples_of("test"), cfg,
                          trained.tokenizer.pad_token_id, trained.device, trained.run_dir, precision.record())


def evaluate_run(run_dir: str | Path, overrides: dict[str, object] | None = None, ggufs: list[str] = ()) -> dict:
    """Evaluate a finished run again; `overrides` are dotted config fields (e.g. {"eval.limit": 5});
    `ggufs`: exported GGUF files evaluated beside it in llama.cpp (same rows, same metrics)."""
    run = RunDir(run_dir)
    run_dir = run.path
    if not run.has_config():
        raise CodeloraError(f"{run_dir} is not a codelora run directory (config.yaml is missing)")
    data = load_config_file(run.config)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    cfg = parse_config(data)
    device = pick_device(cfg.train.device)
    method, task = cfg.train.method, cfg.model.task
    curated = task_data(cfg.data, task, cfg.seed)
    labels = json.loads((run / LABELS).read_text()) if task == "classification" else None
    trained = run.read_json(MANIFEST) or {}
    precision = precision_for(cfg.eval.precision, cfg.model, device)
    base, tokenizer, _ = seeded_base(cfg, device, labels, precision)
    fmt = format_for(task, tokenizer, labels)
    data = encode(curated, fmt, cfg.data.max_length)
    if trained:
        expected = trained["data"]["sha256"]
        if expected != data.curated.sha256:
            raise DataError(f"the data of {cfg.data.source} differs from what run {run_dir} was trained on "
                            f"(sha256 {data.curated.sha256[:12]} != {expected[:12]}); its test split cannot be rebuilt")
    if method == "lora":
        model = load_adapter(base, run_dir)
    elif method == "none":
        model = base
    else:  # the run directory holds the whole tuned model
        model = load_base(dataclasses.replace(cfg.model, name=str(run_dir)), device, dtype=precision.dtype,
                          labels=labels)[0]
    rows, examples = data.rows_of("test"), data.examples_of("test")
    models = candidates(model, method, lambda: base) + gguf_candidates(ggufs, fmt, rows, examples, cfg, labels)
    say(f"evaluating in {precision.name} ({precision.reason})")
    return compare_models(models, fmt, rows, examples, cfg, tokenizer.pad_token_id, device, run_dir,
                          precision.record())


def gguf_candidates(paths: list[str], fmt, rows, examples, cfg: RunConfig, labels) -> list:
    """(name, GgufModel, context) per file, named by file stem; each with a context that fits the
    longest test example and the longest prompt plus its answer."""
    if not paths:
        return []
    if labels is not None or cfg.model.task != "causal-lm":
        raise CodeloraError(f"--gguf evaluates causal language models; this run has model.task={cfg.model.task}")

    longest = max([len(e.input_ids) for e in examples] +
                  [len(fmt.prompt_ids(user_message(r))) + cfg.generate.max_new_tokens for r in rows])
    out, names = [], set()
    for path in paths:
        name = Path(path).stem
        while name in names or name in ("base", "adapter"):
            name += "'"
        names.add(name)
        out.append((name, GgufModel(path, n_ctx=context_for(longest, path), all_logits=True, tokenizer=fmt.tok),
                    contextlib.nullcontext()))
    return out
