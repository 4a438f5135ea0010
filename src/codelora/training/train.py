"""`codelora train`: data -> base model -> LoRA (or another method) -> training loop -> adapter and logs.

train.method picks what trains: LoRA adapters (the run directory is a peft adapter folder), every
weight (`full`) or the last K blocks and the head (`top-K`; both save a whole model there), or
nothing (`none`: the baseline; only the validation loss is measured).

The pieces, in the order they run: setup.py (seed, device, processes, precision, data, model,
method), resume.py (--resume), loop.py (the loop, its schedule and checkpoints), step.py (one
optimizer step), then `save_result` here.
"""

from __future__ import annotations

import json
import resource

from dataclasses import dataclass
from pathlib import Path

from codelora.config import RunConfig
from codelora.config_parse import dump_config
from codelora.console import say
from codelora.data.pipeline import PreparedData
from codelora.data.prompts import PromptFormat
from codelora.io.files import write_json_atomic
from codelora.io.rundir import CONFIG, LABELS, LOSS_CURVE, LOSS_LOG, MANIFEST, PRECISION, SPLIT_INDICES
from codelora.models.sources import ModelSource
from codelora.tracking import Trackers
from codelora.training.loop import baseline, fit
from codelora.training.outputs import LossLog, base_manifest, plot_loss_curve
from codelora.training.resume import check_same_config, find_checkpoint
from codelora.training.setup import Setup, set_up
from codelora.training import whole_adapter as whole
from codelora.training.sharding import local_parameter_bytes
from codelora.training.step import StepContext


@dataclass
class TrainedRun:
    """Everything `run` hands from training to evaluation, so nothing is loaded twice."""

    model: object  # peft.PeftModel for LoRA, else the (tuned) transformers model
    tokenizer: object
    fmt: PromptFormat  # or Seq2SeqFormat / ClassFormat, per model.task
    data: PreparedData
    source: ModelSource
    device: str
    run_dir: Path
    method: str
    precision: str  # fp32 | bf16: what the base model was loaded and trained in


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, allow_partial_resume: bool = False,
          trackers: Trackers | None = None) -> TrainedRun:
    """Train an adapter into `run_dir`. Under torchrun only rank 0 writes (and reports to `trackers`);
    every rank returns the model."""
    if resume:
        check_same_config(cfg, run_dir)
    precision_file = run_dir / PRECISION  # a resumed run keeps the precision it started with
    s = set_up(cfg, json.loads(precision_file.read_text()) if resume and precision_file.is_file() else None)
    if s.dist.main:
        dump_config(cfg, run_dir / CONFIG)
        write_json_atomic(run_dir / SPLIT_INDICES, s.data.splits)
        write_json_atomic(precision_file, s.precision.record())
    checkpoint = find_checkpoint(run_dir, s.dist) if resume else None
    ctx = StepContext(s.root if s.sharded else s.model, s.tokenizer.pad_token_id, s.device,
                      max_batch_tokens=cfg.train.batch_token_budget(s.device), dtype=s.dtype, dist=s.dist,
                      sharded=s.sharded)
    if cfg.train.method == "none":
        stats = baseline(ctx, s.data.examples_of("validation"), cfg.train.batch_size, run_dir, trackers)
    else:
        stats = fit(ctx, s.data.examples_of("train"), s.data.examples_of("validation"), cfg.train, cfg.seed,
                    run_dir, checkpoint, allow_partial_resume, trackers)
    stats["per_process"] = s.dist.gather({"rank": s.dist.rank, "parameter_bytes": local_parameter_bytes(s.model),
                                          "peak_rss_gb": peak_rss_gb()})
    model = s.model
    if s.sharded:  # every process gathers; process 0 writes and proves the result whole
        model, stats["whole"] = whole.save_and_prove(cfg, s, run_dir)
    if s.dist.main:
        save_result(cfg, s, stats, run_dir, weights_saved=s.sharded)
    return TrainedRun(model, s.tokenizer, s.fmt, s.data, s.source, s.device, run_dir, cfg.train.method,
                      s.precision.name)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # kB on Linux


def save_result(cfg: RunConfig, s: Setup, stats: dict, run_dir: Path, weights_saved: bool = False) -> None:
    """What rank 0 leaves in the run directory: the weights (unless `weights_saved`), the labels, the loss
    curve and the manifest."""
    method = cfg.train.method
    if weights_saved:
        pass
    elif method == "lora":
        # adapter_config.json + adapter_model.safetensors; embeddings are never trained here, and "auto"
        # would look the base model up on the Hub
        s.model.save_pretrained(run_dir, save_embedding_layers=False)
    elif method != "none":  # a whole model: usable as --model RUN_DIR
        s.model.save_pretrained(run_dir)
        s.tokenizer.save_pretrained(run_dir)
    if s.labels:
        write_json_atomic(run_dir / LABELS, s.labels)
    plot_loss_curve(LossLog.read(run_dir / LOSS_LOG), run_dir / LOSS_CURVE)

    manifest = base_manifest(cfg.seed) | {
        "method": method,
        "task": cfg.model.task,
        "model": s.source.to_dict(),
        "device": s.device,
        "precision": str(s.dtype).removeprefix("torch."),
        "precision_choice": s.precision.record(),
        "processes": s.dist.world,
        "distributed": cfg.train.distributed if cfg.train.distributed != "auto" or not s.dist.enabled else "ddp",
        "data": s.data.summary(),
        "parameters": {"trainable": s.trainable, "total": s.total},
        "train": stats,
    }
    write_json_atomic(run_dir / MANIFEST, manifest)
    say(f"trained {stats['steps']} steps in {stats['seconds']:.0f} s ({stats['tokens_per_s']:.0f} tokens/s); "
        f"validation loss {stats['val_loss_start']:.3f} -> {stats['val_loss_end']:.3f}")
