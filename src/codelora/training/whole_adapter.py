"""An FSDP run's weights saved whole, and proven whole before the run is called done (`save_and_prove`).

The failures the peers' users met: only one process's slice written (a LoRA tensor of 1/N of its
shape, or the right shape with (N-1)/N of it zero), keys with a wrapper's prefix, an adapter that
silently does nothing. So every process gathers the weights that train (`full_tensor`, a
collective), process 0 writes them as any run does, and then checks what it wrote:

1. every LoRA tensor the model has is in the file, with its whole shape, and nothing else;
2. no key carries a wrapper's prefix; every value is finite;
3. no `lora_B` block of rows is zero in the file where that process's shard of the trained weight is
   not (a shard that was not gathered; each process reports which of its shards are non-zero);
4. where the model fits one process: the file loaded into a fresh base with plain peft gives the
   sharded model's logits on probe rows. That plain model then evaluates the run (`codelora run`).

A full / top-K run saves the whole model; it is checked the same way (every weight at its whole
shape, tied weights once) and reloaded with transformers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from codelora.config import RunConfig
from codelora.console import say
from codelora.errors import CodeloraError
from codelora.io.rundir import ADAPTER_WEIGHTS
from codelora.models.collate import device_batches
from codelora.models.lora import load_adapter
from codelora.models.precision import Precision, fp32_attention_on_cpu
from codelora.models.sources import load_base
from codelora.training.setup import Setup
from codelora.training.sharding import full_state_dict, full_trainable
from codelora.training.step import autocast

# prefixes that torch's wrappers put into parameter names (FSDP1, activation checkpointing, compile, DDP)
WRAPPER_MARKS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module.")
PROBE_ROWS = 2
LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25}  # max |sharded - plain| logit


class AdapterNotWhole(CodeloraError):
    """The saved adapter is not the one that trained (the run is not called done)."""


def save_and_prove(cfg: RunConfig, s: Setup, run_dir: Path):
    """Every process: gather and write (process 0) what trained, then check it. Returns the model that
    evaluates the run in process 0 (a plain one, reloaded from the files; None where it does not fit one
    process) and what was checked (None elsewhere)."""
    method, main = cfg.train.method, s.dist.main
    save_whole(s.model, s.tokenizer, method, run_dir, main)
    expected = expected_shapes(s.model) if method == "lora" else whole_model_shapes(s.model)
    live = s.dist.gather(nonzero_shards(s.model) if method == "lora" else {})  # per process: its shards non-zero?
    batch = probe_batch(s.data.examples_of("validation") or s.data.examples_of("train"), s.tokenizer.pad_token_id,
                        s.device)
    fits = fits_one_process(s.model, s.device)
    reference = sharded_logits(s.root, batch, s.device, s.dtype)  # a collective: every process
    s.dist.barrier()
    if not main:
        return s.model, None
    if method == "none":  # nothing was written: the base model evaluates
        return (load_base(cfg.model, s.device)[0] if fits else None), None
    check_whole(weight_files(run_dir, method), expected, {k: [flags[k] for flags in live] for k in live[0]})
    if not fits:
        say("weights checked whole (shapes, keys, values); the model does not fit one process, so the logits "
            "check and the evaluation in this process are skipped")
        return None, {"tensors": len(expected), "logits_checked": False}
    plain, diff = reload_and_compare(cfg, run_dir, batch, reference, s.device, s.dtype, method)
    return plain, {"tensors": len(expected), "logits_checked": True, "max_logit_diff": diff}


def save_whole(model, tokenizer, method: str, run_dir: Path, main: bool) -> None:
    """Gather what trained (every process takes part) and let process 0 write it as any run does."""
    if method == "lora":
        weights = full_trainable(model)
        if main:
            model.save_pretrained(run_dir, state_dict=weights, save_embedding_layers=False)
    elif method != "none":  # full / top-K: the whole model, usable as --model RUN_DIR
        weights = full_state_dict(model)
        tied = [k for k, shape in whole_model_shapes(model).items() if shape is None]
        weights = {k: v for k, v in weights.items() if k not in tied}  # gathered apart, a tie is no longer seen
        if main:
            model.save_pretrained(run_dir, state_dict=weights)
            tokenizer.save_pretrained(run_dir)


def expected_shapes(peft_model) -> dict[str, tuple[int, ...]]:
    """The adapter file's keys and whole shapes, from the model itself (a sharded weight knows its whole shape)."""
    from peft import get_peft_model_state_dict

    meta = {n: torch.empty(tuple(p.shape), device="meta") for n, p in peft_model.named_parameters() if p.requires_grad}
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, state_dict=meta,
                                                                      save_embedding_layers=False).items()}


def whole_model_shapes(model) -> dict[str, tuple[int, ...] | None]:
    """Every weight of a whole model and its whole shape; None: a tied weight, saved once under another name."""
    seen, shapes = set(), {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shapes[name] = None if id(p) in seen else tuple(p.shape)
        seen.add(id(p))
    return shapes | {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in shapes}  # + buffers saved


def weight_files(run_dir: Path, method: str) -> list[Path]:
    return [run_dir / ADAPTER_WEIGHTS] if method == "lora" else sorted(run_dir.glob("*.safetensors"))


def nonzero_shards(peft_model) -> dict[str, bool]:
    """Whether this process's shard of each lora_B weight holds a non-zero value, by adapter-file key."""
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    flags = {n: torch.tensor(bool((p.to_local() if isinstance(p, DTensor) else p).detach().any()))
             for n, p in peft_model.named_parameters() if p.requires_grad and "lora_B" in n}
    keys = get_peft_model_state_dict(peft_model, state_dict=flags, save_embedding_layers=False)
    return {k: bool(v) for k, v in keys.items()}


def check_whole(paths: Path | list[Path], expected: dict[str, tuple[int, ...] | None],
                live: dict[str, list[bool]] | None = None) -> None:
    """Raise AdapterNotWhole naming the first problem of the weight file(s) (and how many more).
    `expected`: key -> whole shape; None marks a tied weight that may be absent. `live`: lora_B key ->
    per process, whether its shard (rows block r of the weight split N ways, as FSDP splits it) is
    non-zero in the trained model."""
    from safetensors.torch import load_file

    paths = [paths] if isinstance(paths, Path) else paths
    weights = {k: v for p in paths for k, v in load_file(p).items()}
    path = paths[0].parent if len(paths) > 1 else paths[0]
    problems = [f"{k} has a wrapper's prefix" for k in weights if any(m in k for m in WRAPPER_MARKS)]
    problems += [f"{k} is missing" for k in sorted(set(expected) - set(weights)) if expected[k] is not None]
    problems += [f"{k} is not a weight of this model" for k in sorted(set(weights) - set(expected))]
    for k in sorted(set(weights) & set(expected)):
        t = weights[k]
        if expected[k] is not None and tuple(t.shape) != expected[k]:
            problems.append(f"{k} has shape {tuple(t.shape)}, not its whole shape {expected[k]} (a slice)")
        elif not torch.isfinite(t).all():
            problems.append(f"{k} holds NaN or inf")
        elif live and k in live:
            problems += _zero_blocks(k, t, live[k])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AdapterNotWhole(f"the adapter {path} is not whole: {problems[0]}{more}; the run is not called done")


def _zero_blocks(key: str, t: torch.Tensor, live: list[bool]) -> list[str]:
    blocks = t.chunk(len(live), dim=0)  # process r holds block r (fewer blocks than processes: some hold none)
    if any(live) and not t.any():
        return [f"{key} is all zero in the file but not in the trained model"]
    for r, (block, nonzero) in enumerate(zip(blocks, live)):
        if nonzero and not block.any():
            return [f"{key}: rows block {r + 1} of {len(live)} is zero in the file but not in the trained model "
                    f"(a shard that was not gathered)"]
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
        logits = root(batch, logits=True).float().cpu()
    if hasattr(root, "reshard"):
        root.reshard()  # FSDP keeps the root's weights gathered after a forward without backward
    return logits


def reload_and_compare(cfg: RunConfig, run_dir: Path, batch: dict, reference: torch.Tensor, device: str,
                       dtype: torch.dtype, method: str = "lora"):
    """Process 0: a fresh base with the saved adapter in plain peft (or the saved whole model); its logits
    must be the sharded model's. Returns (the plain model, the largest logit difference)."""
    if method == "lora":
        plain = load_adapter(load_base(cfg.model, device, dtype=dtype)[0], run_dir).eval()
    else:
        plain = load_base(dataclasses.replace(cfg.model, name=str(run_dir)), device, dtype=torch.float32)[0].eval()
    fp32_attention_on_cpu(plain, Precision(dtype, "as trained", "as trained"), device)  # attention as in training
    with torch.no_grad(), autocast(device, dtype):
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()
    keep = batch["attention_mask"].bool().cpu()
    diff = float((logits - reference)[keep].abs().max())
    tolerance = LOGIT_TOLERANCE.get(dtype, LOGIT_TOLERANCE[torch.bfloat16])
    what = "adapter" if method == "lora" else "model"
    if not diff <= tolerance:
        raise AdapterNotWhole(f"the {what} in {run_dir} reloaded does not give the sharded model's logits (largest "
                              f"difference {diff:.3g} > {tolerance}); the run is not called done")
    say(f"{what} checked whole: every tensor at its full shape; reloaded, it reproduces the sharded logits "
        f"(largest difference {diff:.2g})")
    return plain, diff


