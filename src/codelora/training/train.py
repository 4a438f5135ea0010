"""`codelora train`: data -> base model -> LoRA (or another method) -> training loop -> adapter and logs.

train.method picks what trains: LoRA adapters (the run directory is a peft adapter folder), every
weight (`full`) or the last K blocks and the head (`top-K`; both save a whole model there), or
nothing (`none`: the baseline; only the validation loss is measured).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codelora.config import RunConfig, TrainConfig, dump_config, load_config_file, parse_method
from codelora.console import say
from codelora.data.dataset import PreparedData, load_task_data, prepare_data, task_format
from codelora.data.labels import label_names
from codelora.data.prompts import Example, PromptFormat
from codelora.errors import CodeloraError, TrainingStopped
from codelora.models.lora import apply_lora, count_parameters
from codelora.models.methods import set_trainable
from codelora.models.sources import ModelSource, load_base, pick_device
from codelora.training.batches import length_grouped_batches, split_to_budget
from codelora.training.checkpoint import find_latest, load_checkpoint, save_checkpoint
from codelora.training.distributed import Dist, init_distributed
from codelora.training.loss import device_batches, supervised_loss_sum, validation_loss
from codelora.io.files import write_json_atomic
from codelora.training.outputs import LossLog, base_manifest, plot_loss_curve
from codelora.training.signals import GracefulStop

# Config fields that may change between an interrupted run and its resumption (a moved run
# directory, another checkpoint interval, other evaluation settings): they do not
# change what is computed.
RESUMABLE_CHANGES = ("out", "eval.", "train.save_every", "train.keep_checkpoints")


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
    method: str = "lora"


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


def resolve_precision(name: str, device: str) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "bf16" and device == "cpu":
        say("warning: train.precision=bf16 on a CPU: bf16 matmuls are ~100x slower than fp32 on most CPUs")
    return torch.bfloat16 if name == "bf16" else torch.float32


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast where asked (LoRA weights stay fp32; the base is loaded in bf16); fp32 needs none."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, allow_partial_resume: bool = False) -> TrainedRun:
    """Train an adapter into `run_dir`. Under torchrun only rank 0 writes; every rank returns the model."""
    import transformers

    if resume:
        _check_same_config(cfg, run_dir)
    transformers.set_seed(cfg.seed)  # python, numpy and torch RNGs: data order and LoRA init
    device = pick_device(cfg.train.device)
    dist = init_distributed(device)
    if dist.enabled and device == "cuda":
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    dtype = resolve_precision(cfg.train.precision, device)
    task, method = cfg.model.task, cfg.train.method
    loaded = load_task_data(cfg.data, task)  # before the model: bad data fails in a second, not after a model load
    labels = label_names(loaded.rows) if task == "classification" else None
    # Weights that train stay fp32 (bf16 runs under autocast): a bf16 weight drops updates below
    # 1/256 of its size, i.e. most AdamW steps at full fine-tuning learning rates.
    trains_base = parse_method(method)[0] in ("full", "top")
    model, tokenizer, source = load_base(cfg.model, device, dtype=torch.float32 if trains_base else dtype,
                                         labels=labels)
    if cfg.model.quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    say(f"model {source.name} ({source.kind}) on {device}, {str(dtype).removeprefix('torch.')}"
        + (f", {cfg.model.quantize} quantized" if cfg.model.quantize != "none" else "")
        + (f", {dist.world} processes" if dist.enabled else ""))
    fmt = task_format(task, tokenizer, labels)
    data = prepare_data(cfg.data, cfg.seed, fmt, loaded)
    sizes = data.summary()["split_sizes"]
    rep = data.curated.split_report
    say(f"data {loaded.source}: {len(data.rows)} rows -> train {sizes['train']}, "
        f"validation {sizes['validation']}, test {sizes['test']}"
        + (f" ({rep['grouped_rows']} related rows kept together in {rep['groups']} groups)" if "groups" in rep else ""))

    if method == "lora":
        model = apply_lora(model, cfg.lora, base_model=source.name, task=task)
    else:
        set_trainable(model, method, task)
    trainable, total = count_parameters(model)
    say(f"{describe_method(cfg)}: trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        + (f"; labels: {', '.join(labels)}" if labels else ""))

    if dist.main:
        dump_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "splits.json", data.splits)
    checkpoint = None
    if resume:
        # rank 0 looks first: it removes cut-off checkpoint writes before the others list the folder
        if dist.main:
            checkpoint = find_latest(run_dir / "checkpoints")
        dist.barrier()
        if not dist.main:
            checkpoint = find_latest(run_dir / "checkpoints")
        if checkpoint is None:
            say(f"nothing to resume in {run_dir}: no verified checkpoint; training from step 0")
    if method == "none":
        stats = baseline(model, data.examples_of("validation"), cfg.train, tokenizer.pad_token_id, device,
                         run_dir if dist.main else None, dist, dtype)
    else:
        stats = fit(model, data.examples_of("train"), data.examples_of("validation"), cfg.train, cfg.seed,
                    tokenizer.pad_token_id, device, run_dir, checkpoint, allow_partial_resume, dist, dtype)
    trained = TrainedRun(model, tokenizer, fmt, data, source, device, run_dir, method)
    if not dist.main:
        return trained
    if method == "lora":
        # adapter_config.json + adapter_model.safetensors; embeddings are never trained here, and "auto"
        # would look the base model up on the Hub
        model.save_pretrained(run_dir, save_embedding_layers=False)
    elif method != "none":  # a whole model: usable as --model RUN_DIR
        model.save_pretrained(run_dir)
        tokenizer.save_pretrained(run_dir)
    if labels:
        write_json_atomic(run_dir / "labels.json", labels)
    plot_loss_curve(LossLog.read(run_dir / "loss_log.jsonl"), run_dir / "loss_curve.png")

    manifest = base_manifest(cfg.seed) | {
        "method": method,
        "task": task,
        "model": source.to_dict(),
        "device": device,
        "precision": str(dtype).removeprefix("torch."),
        "processes": dist.world,
        "data": data.summary(),
        "parameters": {"trainable": trainable, "total": total},
        "train": stats,
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    say(f"trained {stats['steps']} steps in {stats['seconds']:.0f} s ({stats['tokens_per_s']:.0f} tokens/s); "
        f"validation loss {stats['val_loss_start']:.3f} -> {stats['val_loss_end']:.3f}")
    return trained


def describe_method(cfg: RunConfig) -> str:
    kind, k = parse_method(cfg.train.method)
    if kind == "full":
        return "full fine-tuning"
    if kind == "top":
        return f"top-{k}: the last {k} blocks and the head train"
    if kind == "none":
        return "method none: no training (baseline)"
    lo = cfg.lora
    extras = [name for name, on in (("rsLoRA", lo.use_rslora), ("DoRA", lo.use_dora)) if on]
    if lo.layers_to_transform is not None:
        extras.append(f"blocks {lo.layers_to_transform}")
    return f"LoRA r={lo.r} alpha={lo.alpha} on {lo.target_modules}{' (' + ', '.join(extras) + ')' if extras else ''}"


def baseline(model, val_ex: list[Example], tc: TrainConfig, pad_id: int, device: str, run_dir: Path | None,
             dist: Dist, dtype: torch.dtype) -> dict:
    """train.method none: no step is taken; the validation loss is measured once, like fit's step 0."""
    t0 = time.perf_counter()
    with autocast(device, dtype):
        val = validation_loss(model, val_ex, tc.batch_size, pad_id, device, dist)
    with LossLog(run_dir / "loss_log.jsonl" if run_dir else None) as log:
        log.write(split="validation", step=0, epoch=0.0, loss=val)
    return {"steps": 0, "epochs": 0.0, "seconds": round(time.perf_counter() - t0, 2), "train_seconds": 0.0,
            "tokens": 0, "tokens_per_s": 0.0, "final_train_loss": None, "val_loss_start": val, "val_loss_end": val,
            "resumed_from_step": None}


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


def train_step(model, examples: list[Example], micro_batches: list[list[int]], n_sup: int, pad_id: int, device: str,
               max_batch_tokens: int, dtype: torch.dtype) -> tuple[float, int]:
    """Forward and backward over this process's micro-batches of one optimizer step.

    Each summed token loss is divided by `n_sup`, the supervised tokens of the whole step (all
    micro-batches, all processes), so every answer token weighs the same however the rows fall
    into micro-batches, budget splits or processes. Returns (summed loss, real tokens).
    """
    model.train()
    pieces = [p for b in micro_batches for p in split_to_budget(b, examples, max_batch_tokens)]
    loss_sum, tokens = 0.0, 0
    for batch in device_batches(examples, pieces, pad_id, device):
        with autocast(device, dtype):
            s, _ = supervised_loss_sum(model, batch)
        (s / n_sup).backward()
        loss_sum += s.item()
        tokens += int(batch["attention_mask"].sum())
    return loss_sum, tokens


def fit(model, train_ex: list[Example], val_ex: list[Example], tc: TrainConfig, seed: int, pad_id: int,
        device: str, run_dir: Path, checkpoint=None, allow_partial_resume: bool = False, dist: Dist = Dist(),
        dtype: torch.dtype = torch.float32) -> dict:
    from transformers import get_scheduler

    n_batches = math.ceil(len(train_ex) / tc.batch_size)
    per_step = tc.grad_accum * dist.world  # micro-batches per optimizer step, over all processes
    windows_per_epoch = math.ceil(n_batches / per_step)
    total_steps = tc.max_steps or tc.epochs * windows_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    budget = tc.max_batch_tokens or (512 if device == "cpu" else 16384)
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
        log = LossLog(run_dir / "loss_log.jsonl" if dist.main else None, state["log"])
        say(f"resuming from {checkpoint.path.name}: step {progress.step} of {total_steps}, epoch {progress.epoch + 1}")
    else:
        progress = Progress()
        log = LossLog(run_dir / "loss_log.jsonl" if dist.main else None)

    def validate() -> float:
        with autocast(device, dtype):
            return validation_loss(model, val_ex, tc.batch_size, pad_id, device, dist)

    if checkpoint is None:
        progress.val_start = progress.val_loss = validate()
        log.write(split="validation", step=0, epoch=0.0, loss=progress.val_start)

    def checkpoint_now() -> Path:
        path = None
        if dist.main:
            state = {"progress": asdict(progress), "scheduler": scheduler.state_dict(), "log": log.entries,
                     "data_sha256": fingerprint, "total_steps": total_steps}
            path = save_checkpoint(ckpt_root, progress.step, model, optimizer, state, keep=tc.keep_checkpoints)
        dist.barrier()
        return path

    p = progress
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=p.step, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not dist.main)
    # SIGTERM / Ctrl-C from here on: finish the step, checkpoint, stop (a second one stops at once)
    with log, bar, GracefulStop() as stop:
        while p.step < total_steps:
            # A new shuffle each epoch, reproducible from the seed (and so from a checkpoint).
            idx_batches = length_grouped_batches(train_ex, tc.batch_size, seed + p.epoch)
            windows = [idx_batches[w:w + per_step] for w in range(0, len(idx_batches), per_step)]
            while p.step < total_steps:
                t_step = time.perf_counter()
                window = windows[p.window]
                n_sup = sum(train_ex[i].n_supervised for b in window for i in b)
                loss_sum, tokens = train_step(model, train_ex, window[dist.rank::dist.world], n_sup, pad_id, device,
                                              budget, dtype)
                if dist.enabled:  # sum the LoRA gradients, the loss and the token counts over processes
                    totals = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64, device=device)
                    dist.all_reduce_([p_.grad for p_ in params if p_.grad is not None] + [totals])
                    loss_sum, tokens = float(totals[0]), int(totals[1])
                loss = loss_sum / n_sup
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
                    p.val_loss = validate()
                    log.write(split="validation", step=p.step, epoch=epoch_pos, loss=p.val_loss)
                    bar.set_postfix(loss=f"{loss:.3f}", val=f"{p.val_loss:.3f}", tok_s=f"{p.tokens / p.train_s:.0f}")
                if end_of_epoch:  # a checkpoint taken now must point at the next epoch's first window
                    p.epoch, p.window = p.epoch + 1, 0
                if dist.any(stop.requested is not None, device):  # every process stops at the same step
                    path = checkpoint_now()
                    raise TrainingStopped(stop.requested or "a signal to another process", p.step, total_steps, path)
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
