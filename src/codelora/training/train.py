"""`codelora train`: data -> base model -> LoRA -> training loop -> adapter and logs in a run directory."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codelora.console import say
from codelora.config import RunConfig, TrainConfig, dump_config
from codelora.data.dataset import PreparedData, load_data, prepare_data
from codelora.data.prompts import Example, PromptFormat
from codelora.models.lora import apply_lora, count_parameters
from codelora.models.sources import ModelSource, load_base, pick_device
from codelora.training.batches import length_grouped_batches
from codelora.training.loss import device_batches, supervised_loss_sum, validation_loss
from codelora.training.outputs import LossLog, base_manifest, plot_loss_curve, write_json_atomic


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



def train(cfg: RunConfig, run_dir: Path) -> TrainedRun:
    import transformers

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
    log = LossLog(run_dir / "loss_log.jsonl")
    try:
        stats = fit(model, data.examples_of("train"), data.examples_of("validation"), cfg.train, cfg.seed,
                    tokenizer.pad_token_id, device, log)
    finally:
        log.close()
    # adapter_config.json + adapter_model.safetensors; embeddings are never trained here, and "auto"
    # would look the base model up on the Hub
    model.save_pretrained(run_dir, save_embedding_layers=False)
    plot_loss_curve(log.entries, run_dir / "loss_curve.png")

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


def fit(model, train_ex: list[Example], val_ex: list[Example], tc: TrainConfig, seed: int, pad_id: int,
        device: str, log: LossLog) -> dict:
    from transformers import get_scheduler

    n_batches = math.ceil(len(train_ex) / tc.batch_size)
    steps_per_epoch = math.ceil(n_batches / tc.grad_accum)
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    val_start = validation_loss(model, val_ex, tc.batch_size, pad_id, device)
    log.write(split="validation", step=0, epoch=0.0, loss=val_start)
    val_loss = val_start
    step, epoch, tokens, train_s = 0, 0, 0, 0.0  # train_s excludes validation passes
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)
    while step < total_steps:
        # A new shuffle each epoch, reproducible from the seed.
        idx_batches = length_grouped_batches(train_ex, tc.batch_size, seed + epoch)
        for w in range(0, len(idx_batches), tc.grad_accum):
            window = idx_batches[w:w + tc.grad_accum]
            t_step = time.perf_counter()
            model.train()
            # Normalise by the supervised tokens of the whole window, so every answer token
            # weighs the same however the rows fall into micro-batches.
            n_sup = sum(train_ex[i].n_supervised for b in window for i in b)
            loss_sum = 0.0
            for batch in device_batches(train_ex, window, pad_id, device):
                s, _ = supervised_loss_sum(model, batch)
                (s / n_sup).backward()
                loss_sum += s.item()
                tokens += int(batch["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_s += time.perf_counter() - t_step

            loss = loss_sum / n_sup
            log.write(split="train", step=step, epoch=round(step / steps_per_epoch, 4), loss=loss, lr=lr,
                      tokens=tokens, train_s=round(train_s, 3), tokens_per_s=round(tokens / train_s, 1))
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / train_s:.0f}", epoch=epoch + 1)
            bar.update(1)
            end_of_epoch = w + tc.grad_accum >= len(idx_batches)
            if step == total_steps or (tc.eval_every and step % tc.eval_every == 0) or end_of_epoch:
                val_loss = validation_loss(model, val_ex, tc.batch_size, pad_id, device)
                log.write(split="validation", step=step, epoch=round(step / steps_per_epoch, 4), loss=val_loss)
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tokens / train_s:.0f}")
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    train_losses = [e["loss"] for e in log.entries if e["split"] == "train"]
    return {
        "steps": step,
        "epochs": round(step / steps_per_epoch, 4),
        "seconds": round(time.perf_counter() - t0, 2),  # wall time including validation passes
        "train_seconds": round(train_s, 2),
        "tokens": tokens,  # real (non-pad) tokens processed in training steps
        "tokens_per_s": round(tokens / train_s, 1),
        "final_train_loss": train_losses[-1],
        "val_loss_start": val_start,
        "val_loss_end": val_loss,
    }
