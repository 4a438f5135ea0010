"""An FSDP run's weights saved whole, and proven whole before the run is called done.

The failures the peers' users met: only one process's slice written (a LoRA tensor of 1/N of its
shape, or the right shape with (N-1)/N of it zero), keys with a wrapper's prefix, an adapter that
silently does nothing. So every process gathers the weights that train (`full_tensor`, a
collective), process 0 writes them as any run does, and then checks what it wrote:

1. every LoRA tensor the model has is in the file, with its whole shape, and nothing else;
2. no key carries a wrapper's prefix; every value is finite;
3. after training, no `lora_B` is zero, nor a 1/N block of its rows (a shard that was not gathered);
4. where the model fits one process: the file loaded into a fresh base with plain peft gives the
   sharded model's logits on probe rows. That plain model then evaluates the run (`codelora run`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from codelora.config import RunConfig
from codelora.console import say
from codelora.errors import CodeloraError
from codelora.io.rundir import ADAPTER_WEIGHTS
from codelora.models.collate import device_batches
from codelora.models.lora import load_adapter
from codelora.models.sources import load_base
from codelora.training.sharding import full_state_dict, full_trainable
from codelora.training.step import autocast

# prefixes that torch's wrappers put into parameter names (FSDP1, activation checkpointing, compile, DDP)
WRAPPER_MARKS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module.")
PROBE_ROWS = 2
LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25}  # max |sharded - plain| logit


class AdapterNotWhole(CodeloraError):
    """The saved adapter is not the one that trained (the run is not called done)."""


def save_whole(model, tokenizer, method: str, run_dir: Path, main: bool) -> None:
    """Gather what trained (every process takes part) and let process 0 write it as any run does."""
    if method == "lora":
        weights = full_trainable(model)
        if main:
            model.save_pretrained(run_dir, state_dict=weights, save_embedding_layers=False)
    elif method != "none":  # full / top-K: the whole model, usable as --model RUN_DIR
        weights = full_state_dict(model)
        if main:
            model.save_pretrained(run_dir, state_dict=weights)
            tokenizer.save_pretrained(run_dir)


def expected_shapes(peft_model) -> dict[str, tuple[int, ...]]:
    """The adapter file's keys and whole shapes, from the model itself (a sharded weight knows its whole shape)."""
    from peft import get_peft_model_state_dict

    meta = {n: torch.empty(tuple(p.shape), device="meta") for n, p in peft_model.named_parameters() if p.requires_grad}
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, state_dict=meta,
                                                                      save_embedding_layers=False).items()}


def check_whole(path: Path, expected: dict[str, tuple[int, ...]], trained: bool, shards: int) -> None:
    """Raise AdapterNotWhole naming the first problem of the adapter file `path` (and how many more)."""
    from safetensors.torch import load_file

    weights = load_file(path)
    problems = [f"{k} has a wrapper's prefix" for k in weights if any(m in k for m in WRAPPER_MARKS)]
    problems += [f"{k} is missing" for k in sorted(set(expected) - set(weights))]
    problems += [f"{k} is not a weight of this model" for k in sorted(set(weights) - set(expected))]
    for k in sorted(set(weights) & set(expected)):
        t = weights[k]
        if tuple(t.shape) != expected[k]:
            problems.append(f"{k} has shape {tuple(t.shape)}, not its whole shape {expected[k]} (a slice)")
        elif not torch.isfinite(t).all():
            problems.append(f"{k} holds NaN or inf")
        elif trained and "lora_B" in k:
            problems += _zero_blocks(k, t, shards)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AdapterNotWhole(f"the adapter {path} is not whole: {problems[0]}{more}; the run is not called done")


def _zero_blocks(key: str, t: torch.Tensor, shards: int) -> list[str]:
    if not t.any():
        return [f"{key} is all zero after training"]
    for n in sorted({2, shards} - {1}):
        for i, block in enumerate(t.chunk(n, dim=0)):
            if block.numel() and not block.any():
                return [f"{key}: rows block {i + 1} of {n} is all zero after training (a shard that was not gathered)"]
    return []


def fits_one_process(model, device: str) -> bool:
    """Whether a whole fp32 copy of the model fits beside this process (half of what is free)."""
    need = sum(p.numel() for p in model.parameters()) * 4
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = int(meminfo.get("MemAvailable", "0 kB").split()[0]) * 1024
    return need < free / 2


def probe_batch(examples, pad_id: int, device: str) -> dict:
    return next(iter(device_batches(examples, [list(range(min(PROBE_ROWS, len(examples))))], pad_id, device)))


@torch.no_grad()
def sharded_logits(root, batch: dict, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The sharded model's logits on `batch` (a collective: every process calls it)."""
    root.eval()
    with autocast(device, dtype):
        return root(batch, logits=True).float().cpu()


def reload_and_compare(cfg: RunConfig, run_dir: Path, batch: dict, reference: torch.Tensor, device: str,
                       dtype: torch.dtype):
    """Process 0: a fresh base with the saved adapter in plain peft; its logits must be the sharded model's.
    Returns (the plain model, the largest logit difference)."""
    base, _, _ = load_base(cfg.model, device, dtype=torch.float32 if dtype == torch.float32 else dtype)
    plain = load_adapter(base, run_dir).eval()
    with torch.no_grad(), autocast(device, dtype):
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()
    keep = batch["attention_mask"].bool().cpu()
    diff = float((logits - reference)[keep].abs().max())
    tolerance = LOGIT_TOLERANCE.get(dtype, LOGIT_TOLERANCE[torch.bfloat16])
    if not diff <= tolerance:
        raise AdapterNotWhole(f"the adapter in {run_dir} loaded in plain peft does not give the sharded model's "
                              f"logits (largest difference {diff:.3g} > {tolerance}); the run is not called done")
    say(f"adapter checked whole: every tensor at its full shape; plain peft reproduces the sharded logits "
        f"(largest difference {diff:.2g})")
    return plain, diff


def adapter_file(run_dir: Path) -> Path:
    return run_dir / ADAPTER_WEIGHTS
