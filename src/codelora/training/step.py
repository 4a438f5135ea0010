"""One optimizer step's computation: forward and backward over micro-batches, the gradient sum
across processes, and the validation loss; `loop.py` decides when each runs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from codelora.data.prompts import Example
from codelora.models.collate import device_batches
from codelora.models.loss import supervised_loss_sum, validation_loss
from codelora.training.batches import split_to_budget
from codelora.training.distributed import Dist


@dataclass(frozen=True)
class StepContext:
    """Where and how the forward and backward passes run; the same for every step of a run."""

    model: object  # peft.PeftModel for LoRA, else the transformers model
    pad_id: int
    device: str
    max_batch_tokens: int  # micro-batches over this many padded tokens are split (TrainConfig.batch_token_budget)
    dtype: torch.dtype = torch.float32  # bf16: run under autocast
    dist: Dist = field(default_factory=Dist)
    # train.distributed fsdp: `model` is the sharding.LossModule root, whose forward is the loss; every
    # forward and backward is a collective, so every process runs the same number of passes
    sharded: bool = False

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, int]:
        return self.model(batch) if self.sharded else supervised_loss_sum(self.model, batch)


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast where asked (LoRA weights stay fp32; the base is loaded in bf16); fp32 needs none."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def train_step(ctx: StepContext, examples: list[Example], window: list[list[int]], n_sup: int) -> tuple[float, int]:
    """Forward and backward over this process's micro-batches of one optimizer step's `window`.

    Process r takes micro-batches r, r + N, ... of the window. Each summed token loss is divided by
    `n_sup`, the supervised tokens of the whole step (all micro-batches, all processes), so every
    answer token weighs the same however the rows fall into micro-batches, budget splits or
    processes. Returns (summed loss, real tokens).
    """
    ctx.model.train()
    rank, world = ctx.dist.rank, ctx.dist.world
    pieces = _pieces(examples, window[rank::world], ctx.max_batch_tokens)
    weights = [1.0] * len(pieces)
    if ctx.sharded and world > 1:  # pad with passes that count for nothing, up to the busiest process's count
        busiest = max(len(_pieces(examples, window[r::world], ctx.max_batch_tokens)) for r in range(world))
        filler = [min((i for b in window for i in b), key=lambda i: len(examples[i].input_ids))]
        pieces, weights = pieces + [filler] * (busiest - len(pieces)), weights + [0.0] * (busiest - len(pieces))
    loss_sum, tokens = 0.0, 0
    for batch, weight in zip(device_batches(examples, pieces, ctx.pad_id, ctx.device), weights):
        with autocast(ctx.device, ctx.dtype):
            s, _ = ctx.loss_sum(batch)
        (s * (weight / n_sup)).backward()
        if weight:
            loss_sum += s.item()
            tokens += int(batch["attention_mask"].sum())
    return loss_sum, tokens


def _pieces(examples: list[Example], micro_batches: list[list[int]], max_tokens: int) -> list[list[int]]:
    return [p for b in micro_batches for p in split_to_budget(b, examples, max_tokens)]


def reduce_across_processes(ctx: StepContext, params: list[torch.Tensor], loss_sum: float,
                            tokens: int) -> tuple[float, int]:
    """Sum the gradients of every weight that trains, the loss and the token count over processes.

    What trains is the LoRA weights, or all weights (`full`) or the last K blocks (`top-K`); each
    process then holds the gradient of the whole step. A single process returns its own numbers.
    """
    if not ctx.dist.enabled:
        return loss_sum, tokens
    totals = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64, device=ctx.device)
    # under FSDP the gradients were reduce-scattered (summed) during backward already
    ctx.dist.all_reduce_(([] if ctx.sharded else [p.grad for p in params if p.grad is not None]) + [totals])
    return float(totals[0]), int(totals[1])


def validate(ctx: StepContext, examples: list[Example], batch_size: int) -> float:
    """Mean validation loss per supervised token, over all processes."""
    with autocast(ctx.device, ctx.dtype):
        loss = validation_loss(ctx.model, examples, batch_size, ctx.pad_id, ctx.device, ctx.dist,
                               loss_fn=ctx.loss_sum if ctx.sharded else None)
    if ctx.sharded and ctx.dist.enabled:
        ctx.model.reshard()  # FSDP keeps the root's weights gathered after a forward without backward
    return loss
