"""train.distributed: fsdp — the model sharded across processes with torch's own FSDP2 (`fully_shard`).

Each decoder block is its own FSDP unit: its weights live as 1/N shards on each of the N processes
and are gathered just for the block's forward and backward, so the frozen base costs 1/N of its
size per process instead of a whole copy. The root unit is `LossModule`, whose forward *is* the
training loss: the fused-head loss (models/loss.py) calls the decoder and the head separately, and
it may only do so inside the root's forward, where the root's weights (embeddings, final norm, the
tied head) are gathered.

Mixed precision is FSDP's policy: the gathered copies are cast to the run's compute precision and
gradients are reduced in fp32. Storage is what the run loads: a bf16 run keeps its frozen base in
bf16 and the LoRA weights (what trains, and what AdamW updates) in fp32; FSDP2 gathers a unit of
mixed dtypes (FSDP1 could not: the "uniform dtype" failures of TRL #1723), but reduces one dtype of
gradients, so what trains must share one. Gradients are *summed* over processes (divide factor 1),
as in the DDP path: the loss is already divided by the whole step's supervised tokens.
"""

from __future__ import annotations

import torch

from codelora.errors import ConfigError
from codelora.models.loss import supervised_loss_sum
from codelora.models.methods import block_stacks
from codelora.training.distributed import Dist


class LossModule(torch.nn.Module):
    """The FSDP root: forward(batch) -> (summed token loss, supervised tokens); with logits=True the
    logits of batch["input_ids"] (the completeness check compares them with a plain peft model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, logits: bool = False):
        if logits:
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return supervised_loss_sum(self.model, batch)


def shard(model, dist: Dist, compute_dtype: torch.dtype, cpu_offload: bool, device: str = "cpu",
          from_process_0: bool = False) -> LossModule:
    """Wrap `model` (peft applied, method set) in the loss root and shard it over the process group.

    `from_process_0`: only process 0's model holds weights (in CPU memory); the others' are on the
    meta device. Each process then receives its shards of process 0's weights (and its buffers) on
    `device`. One process: nothing to shard; the root still wraps the model so that checkpoint keys
    are the same at every number of processes (a run can resume on another one).
    """
    root = LossModule(model)
    if not dist.enabled:
        return root
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
    if len(dtypes) > 1:  # FSDP reduce-scatters a unit's gradients as one buffer of one dtype
        raise ConfigError(f"train.distributed=fsdp needs the weights that train in one dtype, but they are {dtypes}; "
                          f"use train.distributed: ddp")
    stacks = block_stacks(model)
    if not stacks:
        raise ConfigError(f"train.distributed=fsdp: found no block stack in {type(model).__name__} to shard; "
                          f"use train.distributed: ddp")
    policy = dict(mp_policy=MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                                                 reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
    whole = model.state_dict() if from_process_0 and dist.main else {}  # process 0's weights, to hand out
    for _, stack in stacks:
        for block in stack:
            fully_shard(block, **policy)
    fully_shard(root, **policy)  # embeddings, final norm and head (tied to the embeddings: one unit)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum, not mean: see the module docstring
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    if from_process_0:
        _receive_weights(root, model, whole, dist, device)
    return root


def _receive_weights(root, model, whole: dict, dist: Dist, device: str) -> None:
    """Process 0 broadcasts its weights; every process keeps its shards (torch's broadcast_from_rank0)."""
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.main:
        root.to(device)
    else:
        root.to_empty(device=device)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():  # not in the state dict (e.g. rotary frequencies), and never sharded
        tdist.broadcast(buffer, src=0)


def local_parameter_bytes(model) -> int:
    """Bytes of the weights this process holds: its shards under FSDP, every weight otherwise."""
    from torch.distributed.tensor import DTensor

    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total


def full_trainable(model) -> dict[str, torch.Tensor]:
    """Every weight that trains, whole, on the CPU, by its name in `model` (the peft / transformers model,
    not the loss root). A collective: every process calls it; each gets the whole tensors."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if isinstance(p, DTensor) else p
            out[name] = t.detach().to("cpu", copy=True)
    return out


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered to the CPU (full / top-K runs save the whole model). A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
