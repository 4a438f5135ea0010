"""The training loop: AdamW steps over seeded, length-grouped batches, validation and checkpoints
on a fixed schedule, a clean stop on SIGTERM / Ctrl-C, and resuming from a checkpoint.

`fit` runs it; `baseline` stands in for it when nothing trains (train.method none).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from codelora.config import TrainConfig
from codelora.console import progress, say
from codelora.data.prompts import Example
from codelora.errors import CodeloraError, TrainingStopped, first_line
from codelora.io.rundir import CHECKPOINTS, LOSS_LOG
from codelora.tracking import Trackers
from codelora.training.batches import length_grouped_batches
from codelora.training.checkpoint import Checkpoint, latest_name, load_checkpoint, save_checkpoint
from codelora.training.sharded_checkpoint import load_sharded, save_sharded
from codelora.training.outputs import LossLog
from codelora.training.signals import GracefulStop
from codelora.training.step import StepContext, reduce_across_processes, train_step, validate


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


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps, and after which ones the loop validates and checkpoints."""

    per_step: int  # micro-batches per optimizer step, over all processes: one window
    windows_per_epoch: int
    total_steps: int
    eval_every: int  # 0: only after each epoch and the last step (and before the first)
    save_every: int  # 0: only when stopped by a signal

    @classmethod
    def of(cls, tc: TrainConfig, n_train: int, per_step: int) -> Schedule:
        windows_per_epoch = math.ceil(math.ceil(n_train / tc.batch_size) / per_step)
        return cls(per_step, windows_per_epoch, tc.max_steps or tc.epochs * windows_per_epoch, tc.eval_every,
                   tc.save_every)

    def epochs(self, step: int) -> float:
        return round(step / self.windows_per_epoch, 4)

    def validates_after(self, step: int, end_of_epoch: bool) -> bool:
        return step == self.total_steps or bool(self.eval_every and step % self.eval_every == 0) or end_of_epoch

    def checkpoints_after(self, step: int) -> bool:
        return bool(self.save_every) and (step % self.save_every == 0 or step == self.total_steps)


@dataclass
class Loop:
    """One run of the loop: what trains on which rows, its optimizer, its schedule, and where it is."""

    ctx: StepContext
    tc: TrainConfig
    seed: int
    train_ex: list[Example]
    val_ex: list[Example]
    schedule: Schedule
    params: list[torch.nn.Parameter]  # the weights that train
    optimizer: torch.optim.Optimizer
    scheduler: object  # a torch LR scheduler from transformers.get_scheduler
    run_dir: Path
    fingerprint: str  # data_fingerprint of the rows: a checkpoint of other data is refused
    trackers: Trackers  # train.report_to: each loss log entry is sent to them too
    progress: Progress = field(default_factory=Progress)
    log: LossLog = field(init=False)  # opened by `begin` or `restore`
    resumed_from_step: int | None = None

    @property
    def log_path(self) -> Path | None:
        return self.run_dir / LOSS_LOG if self.ctx.dist.main else None  # rank 0 alone writes


def fit(ctx: StepContext, train_ex: list[Example], val_ex: list[Example], tc: TrainConfig, seed: int,
        run_dir: Path, checkpoint: Checkpoint | None = None, allow_partial_resume: bool = False,
        trackers: Trackers | None = None) -> dict:
    """Train ctx.model on train_ex; return the statistics that go into manifest.json as "train".

    With `checkpoint` the run continues from it and ends as if it had never stopped, also on another
    number of processes: a step keeps the micro-batches it had when the run started. Micro-batches
    are split to ctx.max_batch_tokens (tc.max_batch_tokens is not read here).
    """
    per_step = checkpoint.state().get("per_step") if checkpoint is not None else None
    loop = make_loop(ctx, train_ex, val_ex, tc, seed, run_dir, trackers or Trackers(), per_step)
    if checkpoint is not None:
        restore(loop, checkpoint, allow_partial_resume)
    else:
        begin(loop)
    p, ctx = loop.progress, loop.ctx
    t0 = time.perf_counter()
    bar = progress(total=loop.schedule.total_steps, initial=p.step, desc="training", unit="step")
    # SIGTERM / Ctrl-C from here on: finish the step, checkpoint, stop (a second one stops at once)
    with loop.log, bar, GracefulStop() as stop:
        try:
            while p.step < loop.schedule.total_steps:
                run_epoch(loop, bar, stop)
        except RuntimeError as e:
            if not ctx.dist.enabled or not is_process_group_failure(e):
                raise
            raise CodeloraError(f"training stopped at step {p.step}: another process died or stopped answering "
                                f"({first_line(e)[:200]}); resume from checkpoint "
                                f"{latest_name(run_dir / CHECKPOINTS) or '(none yet: step 0)'} with --resume") from None
    return summary(loop, time.perf_counter() - t0)


def is_process_group_failure(e: RuntimeError) -> bool:
    """A collective that failed because a peer died, hung past train.dist_timeout_s or closed its connection."""
    import torch.distributed as tdist

    return isinstance(e, tdist.DistError) or any(w in str(e) for w in ("gloo", "NCCL", "Connection", "timed out"))


def make_loop(ctx: StepContext, train_ex: list[Example], val_ex: list[Example], tc: TrainConfig, seed: int,
              run_dir: Path, trackers: Trackers, per_step: int | None = None) -> Loop:
    """The schedule, AdamW over the weights that train, and the learning-rate schedule.
    `per_step`: micro-batches per optimizer step (a resumed run keeps its own); else grad_accum x processes."""
    from transformers import get_scheduler

    if per_step is not None and per_step != tc.grad_accum * ctx.dist.world:
        say(f"each optimizer step keeps the {per_step} micro-batches it had when the run started "
            f"(now {ctx.dist.world} process{'es' if ctx.dist.world > 1 else ''})")
    schedule = Schedule.of(tc, len(train_ex), per_step or tc.grad_accum * ctx.dist.world)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_training_steps=schedule.total_steps,
                              num_warmup_steps=math.ceil(tc.warmup_ratio * schedule.total_steps))
    return Loop(ctx, tc, seed, train_ex, val_ex, schedule, params, optimizer, scheduler, run_dir,
                data_fingerprint(train_ex, val_ex), trackers)


def begin(loop: Loop) -> None:
    """A fresh run: a new loss log and the validation loss before any step (step 0)."""
    loop.trackers.start([])
    loop.log = LossLog(loop.log_path, sink=loop.trackers.log_entry)
    p = loop.progress
    p.val_start = p.val_loss = validate(loop.ctx, loop.val_ex, loop.tc.batch_size)
    loop.log.write(split="validation", step=0, epoch=0.0, loss=p.val_start)


def run_epoch(loop: Loop, bar, stop: GracefulStop) -> None:
    """The rest of the current epoch (all of it, unless resumed inside it), or up to the last step."""
    p, schedule, ctx = loop.progress, loop.schedule, loop.ctx
    # A new shuffle each epoch, reproducible from the seed (and so from a checkpoint).
    idx_batches = length_grouped_batches(loop.train_ex, loop.tc.batch_size, loop.seed + p.epoch)
    per_step = schedule.per_step
    windows = [idx_batches[w:w + per_step] for w in range(0, len(idx_batches), per_step)]
    while p.step < schedule.total_steps:
        loss = optimizer_step(loop, windows[p.window])
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{p.tokens / p.train_s:.0f}", epoch=p.epoch + 1)
        bar.update(1)
        end_of_epoch = p.window == len(windows)
        if schedule.validates_after(p.step, end_of_epoch):
            p.val_loss = validate(ctx, loop.val_ex, loop.tc.batch_size)
            loop.log.write(split="validation", step=p.step, epoch=schedule.epochs(p.step), loss=p.val_loss)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{p.val_loss:.3f}", tok_s=f"{p.tokens / p.train_s:.0f}")
        if end_of_epoch:  # a checkpoint taken now must point at the next epoch's first window
            p.epoch, p.window = p.epoch + 1, 0
        if ctx.dist.any(stop.requested is not None, ctx.device):  # every process stops at the same step
            path = save_state(loop)
            raise TrainingStopped(stop.requested or "a signal to another process", p.step, schedule.total_steps, path)
        if schedule.checkpoints_after(p.step):
            save_state(loop)
        if end_of_epoch:
            return


def optimizer_step(loop: Loop, window: list[list[int]]) -> float:
    """One optimizer step over one window of micro-batches; logs it and returns its loss per answer token."""
    p, ctx, examples = loop.progress, loop.ctx, loop.train_ex
    t_step = time.perf_counter()
    n_sup = sum(examples[i].n_supervised for b in window for i in b)  # the whole window's, all processes
    loss_sum, tokens = train_step(ctx, examples, window, n_sup)
    loss_sum, tokens = reduce_across_processes(ctx, loop.params, loss_sum, tokens)
    loss = loss_sum / n_sup
    torch.nn.utils.clip_grad_norm_(loop.params, loop.tc.max_grad_norm)
    lr = loop.scheduler.get_last_lr()[0]
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    p.step, p.window, p.tokens = p.step + 1, p.window + 1, p.tokens + tokens
    p.train_s += time.perf_counter() - t_step
    loop.log.write(split="train", step=p.step, epoch=loop.schedule.epochs(p.step), loss=loss, lr=lr,
                   tokens=p.tokens, train_s=round(p.train_s, 3), tokens_per_s=round(p.tokens / p.train_s, 1))
    return loss


def save_state(loop: Loop) -> Path | None:
    """Checkpoint the loop (rank 0 writes, every process waits for it; under FSDP each writes its shards);
    returns its path on rank 0."""
    ctx, path = loop.ctx, None
    state = {"progress": asdict(loop.progress), "scheduler": loop.scheduler.state_dict(), "log": loop.log.entries,
             "data_sha256": loop.fingerprint, "total_steps": loop.schedule.total_steps,
             "per_step": loop.schedule.per_step, "processes": ctx.dist.world}
    root, step, keep = loop.run_dir / CHECKPOINTS, loop.progress.step, loop.tc.keep_checkpoints
    if ctx.sharded:
        path = save_sharded(root, step, ctx.model, loop.optimizer, state, keep, ctx.dist, ctx.device)
    elif ctx.dist.main:
        path = save_checkpoint(root, step, ctx.model, loop.optimizer, state, keep=keep)
    ctx.dist.barrier()
    return path if ctx.dist.main else None


def restore(loop: Loop, checkpoint: Checkpoint, allow_partial: bool) -> None:
    """Continue from `checkpoint`: weights, optimizer, RNG, scheduler, progress and the loss log so far."""
    if loop.ctx.sharded:
        state = load_sharded(checkpoint, loop.ctx.model, loop.optimizer)
    elif checkpoint.sharded:
        raise CodeloraError(f"checkpoint {checkpoint.path} was written by a train.distributed fsdp run; "
                            f"resume it with train.distributed: fsdp")
    else:
        state = load_checkpoint(checkpoint, loop.ctx.model, loop.optimizer, allow_partial)
    if state["data_sha256"] != loop.fingerprint:
        raise CodeloraError(f"checkpoint {checkpoint.path} was trained on other data (the tokenized rows differ); "
                            f"resume with the same data and model, or pass --overwrite to start over")
    if "scheduler" in state:
        loop.scheduler.load_state_dict(state["scheduler"])
    loop.progress = Progress(**state["progress"])
    loop.trackers.start(state["log"])
    loop.log = LossLog(loop.log_path, state["log"], sink=loop.trackers.log_entry)
    loop.resumed_from_step = checkpoint.step
    say(f"resuming from {checkpoint.path.name}: step {loop.progress.step} of {loop.schedule.total_steps}, "
        f"epoch {loop.progress.epoch + 1}")


def data_fingerprint(*splits: list[Example]) -> str:
    h = hashlib.sha256()
    for examples in splits:
        for e in examples:
            h.update(repr((e.input_ids, e.labels)).encode())
        h.update(b"|")
    return h.hexdigest()


def summary(loop: Loop, seconds: float) -> dict:
    p = loop.progress
    train_losses = [e["loss"] for e in loop.log.entries if e["split"] == "train"]
    return {
        "steps": p.step,
        "epochs": loop.schedule.epochs(p.step),
        "seconds": round(seconds, 2),  # wall time of this process, validation included
        "train_seconds": round(p.train_s, 2),
        "tokens": p.tokens,  # real (non-pad) tokens processed in training steps
        "tokens_per_s": round(p.tokens / p.train_s, 1) if p.train_s else 0.0,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "val_loss_start": p.val_start,
        "val_loss_end": p.val_loss,
        "resumed_from_step": loop.resumed_from_step,
    }


def baseline(ctx: StepContext, val_ex: list[Example], batch_size: int, run_dir: Path,
             trackers: Trackers | None = None) -> dict:
    """train.method none: no step is taken; the validation loss is measured once, like fit's step 0."""
    t0 = time.perf_counter()
    val = validate(ctx, val_ex, batch_size)
    trackers = trackers or Trackers()
    trackers.start([])
    with LossLog(run_dir / LOSS_LOG if ctx.dist.main else None, sink=trackers.log_entry) as log:
        log.write(split="validation", step=0, epoch=0.0, loss=val)
    return {"steps": 0, "epochs": 0.0, "seconds": round(time.perf_counter() - t0, 2), "train_seconds": 0.0,
            "tokens": 0, "tokens_per_s": 0.0, "final_train_loss": None, "val_loss_start": val, "val_loss_end": val,
            "resumed_from_step": None}
