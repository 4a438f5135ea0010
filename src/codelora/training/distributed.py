"""Data-parallel training across processes: `torchrun --nproc_per_node N` or `accelerate launch`.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; that is all we read. Every
process holds the whole (small) dataset and computes the same seeded batch order; in each
optimizer step rank r takes micro-batches r, r + N, r + 2N, ... of the step's window. The
gradients of what trains are all-reduced once per step (a few MB for LoRA; every weight for
`full`, the last blocks for `top-K`), so plain all_reduce is as good as DDP's bucketing here and
keeps the loop readable. Rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over all processes, in place (one flat buffer: one message per step)."""
        if not self.enabled or not tensors:
            return
        import torch.distributed as tdist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        tdist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool, device: str) -> bool:
        """True if `flag` is true on any process (a stop request must stop every rank at the same step)."""
        if not self.enabled:
            return flag
        import torch.distributed as tdist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, value) -> list:
        """Every process's `value` (plain data), in rank order, on every process."""
        if not self.enabled:
            return [value]
        import torch.distributed as tdist

        out = [None] * self.world
        tdist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier()


def init_distributed(device: str, timeout_s: int = 600) -> Dist:
    """Join the process group when launched by torchrun/accelerate; a no-op for a single process.

    `timeout_s` bounds every wait on the other processes (joining, each collective): a process that
    died or never came ends the run with an error instead of a hang.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                 timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank)
