"""`codelora train`: data -> base model -> LoRA -> training loop -> adapter and logs in a run directory."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codelora.config import RunConfig, TrainConfig, dump_config, load_config_file
from codelora.console import say
from codelora.data.dataset import PreparedData, load_data, prepare_data
from codelora.data.prompts import Example, PromptFormat
from codelora.errors import CodeloraError, TrainingStopped
from codelora.models.lora import apply_lora, count_parameters
from codelora.models.sources import ModelSource, load_base, pick_device
from codelora.training.batches import length_grouped_batches
from codelora.training.checkpoint import find_latest, load_checkpoint, save_checkpoint
from codelora.training.loss import device_batches, supervised_loss_sum, validation_loss
from codelora.training.outputs import LossLog, base_manifest, plot_loss_curve, write_json_atomic
from codelora.training.signals import GracefulStop

# Config fields that may change between an interrupted run and its resumption (a moved run
# directory, another checkpoint interval, other evaluation settings): they do not
# change what is computed.
RESUMABLE_CHANGES = ("out", "eval.", "train.save_every", "train.keep_checkpoints")


@dataclass
class TrainedRun:
    """Everything `run` hands from training to evaluation, so nothing is loaded twice."""

    model: object  # peft.PeftModel
    tokenizer: object
    fmt: PromptFormat
    data: PreparedData
    source: ModelSource
    device: str
    run_dir: Path


@dataclass
class Progress:
    """Where the loop is; a checkpoint stores it, so a resumed run continues at the same batch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    window: int = 0  # next accumulation window of this epoch's batch order
    tokens: int = 0  # real (non-pad) tokens trained on
    train_s: float = 0.0  # seconds in training steps (validation excluded)
    val_start: float | None = None
    val_loss: float | None = None


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, allow_partial_resume: bool = False) -> TrainedRun:
    import transformers

    if resume:
        _check_same_config(cfg, run_dir)
    transformers.set_seed(cfg.seed)  # python, numpy and torch RNGs: data order and LoRA init
    device = pick_device(cfg.train.device)
    loaded = load_data(cfg.data)  # before the model: bad data fails in a second, not after a model load
    model, tokenizer, source = load_base(cfg.model, device)
    say(f"model {source.name} ({source.kind}) on {device}")
    fmt = PromptFormat(tokenizer)
    data = prepare_data(cfg.data, cfg.seed, fmt, loaded)
    sizes = data.summary()["split_sizes"]
    rep = data.curated.split_report
    say(f"data {loaded.source}: {len(data.rows)} rows -> train {sizes['train']}, "
        f"validation {sizes['validation']}, test {sizes['test']}"
        + (f" ({rep['grouped_rows']} related rows kept together in {rep['groups']} groups)" if "groups" in rep else ""))

    model = apply_lora(model, cfg.lora, base_model=source.name)
    trainable, total = count_parameters(model)
    say(f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} on {cfg.lora.target_modules}: "
        f"trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    dump_config(cfg, run_dir / "config.yaml")
    write_json_atomic(run_dir / "splits.json", data.splits)
    checkpoint = find_latest(run_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        say(f"nothing to resume in {run_dir}: no verified checkpoint; training from step 0")
    stats = fit(model, data.examples_of("train"), data.examples_of("validation"), cfg.train, cfg.seed,
                tokenizer.pad_token_id, device, run_dir, checkpoint, allow_partial_resume)
    # adapter_config.json + adapter_model.safetensors; embeddings are never trained here, and "auto"
    # would look the base model up on the Hub
    model.save_pretrained(run_dir, save_embedding_layers=False)
    plot_loss_curve(LossLog.read(run_dir / "loss_log.jsonl"), run_dir / "loss_curve.png")

    manifest = base_manifest(cfg.seed) | {
        "model": source.to_dict(),
        "device": device,
        "data": data.summary(),
        "parameters": {"trainable": trainable, "total": total},
        "train": stats,
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    say(f"trained {stats['steps']} steps in {stats['seconds']:.0f} s ({stats['tokens_per_s']:.0f} tokens/s); "
        f"validation loss {stats['val_loss_start']:.3f} -> {stats['val_loss_end']:.3f}")
    return TrainedRun(model, tokenizer, fmt, data, source, device, run_dir)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "categories":
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_config(cfg: RunConfig, run_dir: Path) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(load_config_file(saved_path)), _flatten(cfg.to_dict())
    diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
             if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        raise CodeloraError(f"--resume needs the settings of the interrupted run, but {'; '.join(diffs)}; "
                            f"run the original command with --resume, or pass --overwrite to start over")


def data_fingerprint(*splits: list[Example]) -> str:
    h = hashlib.sha256()
    for examples in splits:
        for e in examples:
            h.update(repr((e.input_ids, e.labels)).encode())
        h.update(b"|")
    return h.hexdigest()


def train_step(model, examples: list[Example], window: list[list[int]], pad_id: int, device: str) -> tuple[float, int]:
    """Forward and backward over one accumulation window; return (mean loss, real tokens)."""
    model.train()
    # Normalise by the supervised tokens of the whole window, so every answer token weighs the
    # same however the rows fall into micro-batches.
    n_sup = sum(examples[i].n_supervised for b in window for i in b)
    loss_sum, tokens = 0.0, 0
    for batch in device_batches(examples, window, pad_id, device):
        s, _ = supervised_loss_sum(model, batch)
        (s / n_sup).backward()
        loss_sum += s.item()
        tokens += int(batch["attention_mask"].sum())
    return loss_sum / n_sup, tokens


def fit(model, train_ex: list[Example], val_ex: list[Example], tc: TrainConfig, seed: int, pad_id: int,
        device: str, run_dir: Path, checkpoint=None, allow_partial_resume: bool = False) -> dict:
    from transformers import get_scheduler

    n_batches = math.ceil(len(train_ex) / tc.batch_size)
    windows_per_epoch = math.ceil(n_batches / tc.grad_accum)
    total_steps = tc.max_steps or tc.epochs * windows_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    fingerprint = data_fingerprint(train_ex, val_ex)
    ckpt_root = run_dir / "checkpoints"

    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, allow_partial_resume)
        if state["data_sha256"] != fingerprint:
            raise CodeloraError(f"checkpoint {checkpoint.path} was trained on other data (the tokenized rows differ); "
                                f"resume with the same data and model, or pass --overwrite to start over")
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
        log = LossLog(run_dir / "loss_log.jsonl", state["log"])
        say(f"resuming from {checkpoint.path.name}: step {progress.step} of {total_steps}, epoch {progress.epoch + 1}")
    else:
        progress = Progress()
        log = LossLog(run_dir / "loss_log.jsonl")
        progress.val_start = progress.val_loss = validation_loss(model, val_ex, tc.batch_size, pad_id, device)
        log.write(split="validation", step=0, epoch=0.0, loss=progress.val_start)

    def checkpoint_now() -> Path:
        state = {"progress": asdict(progress), "scheduler": scheduler.state_dict(), "log": log.entries,
                 "data_sha256": fingerprint, "total_steps": total_steps}
        return save_checkpoint(ckpt_root, progress.step, model, optimizer, state, keep=tc.keep_checkpoints)

    p = progress
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=p.step, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)
    # SIGTERM / Ctrl-C from here on: finish the step, checkpoint, stop (a second one stops at once)
    with log, bar, GracefulStop() as stop:
        while p.step < total_steps:
            # A new shuffle each epoch, reproducible from the seed (and so from a checkpoint).
            idx_batches = length_grouped_batches(train_ex, tc.batch_size, seed + p.epoch)
            windows = [idx_batches[w:w + tc.grad_accum] for w in range(0, len(idx_batches), tc.grad_accum)]
            while p.step < total_steps:
                t_step = time.perf_counter()
                loss, tokens = train_step(model, train_ex, windows[p.window], pad_id, device)
                torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                p.step, p.window, p.tokens = p.step + 1, p.window + 1, p.tokens + tokens
                p.train_s += time.perf_counter() - t_step

                epoch_pos = round(p.step / windows_per_epoch, 4)
                log.write(split="train", step=p.step, epoch=epoch_pos, loss=loss, lr=lr, tokens=p.tokens,
                          train_s=round(p.train_s, 3), tokens_per_s=round(p.tokens / p.train_s, 1))
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{p.tokens / p.train_s:.0f}", epoch=p.epoch + 1)
                bar.update(1)
                end_of_epoch = p.window == len(windows)
                if p.step == total_steps or (tc.eval_every and p.step % tc.eval_every == 0) or end_of_epoch:
                    p.val_loss = validation_loss(model, val_ex, tc.batch_size, pad_id, device)
                    log.write(split="validation", step=p.step, epoch=epoch_pos, loss=p.val_loss)
                    bar.set_postfix(loss=f"{loss:.3f}", val=f"{p.val_loss:.3f}", tok_s=f"{p.tokens / p.train_s:.0f}")
                if end_of_epoch:  # a checkpoint taken now must point at the next epoch's first window
                    p.epoch, p.window = p.epoch + 1, 0
                if stop.requested:
                    path = checkpoint_now()
                    raise TrainingStopped(stop.requested, p.step, total_steps, path)
                if tc.save_every and (p.step % tc.save_every == 0 or p.step == total_steps):
                    checkpoint_now()
                if end_of_epoch:
                    break
    train_losses = [e["loss"] for e in log.entries if e["split"] == "train"]
    return {
        "steps": p.step,
        "epochs": round(p.step / windows_per_epoch, 4),
        "seconds": round(time.perf_counter() - t0, 2),  # wall time of this process, validation included
        "train_seconds": round(p.train_s, 2),
        "tokens": p.tokens,  # real (non-pad) tokens processed in training steps
        "tokens_per_s": round(p.tokens / p.train_s, 1) if p.train_s else 0.0,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "val_loss_start": p.val_start,
        "val_loss_end": p.val_loss,
        "resumed_from_step": checkpoint.step if checkpoint is not None else None,
    }
