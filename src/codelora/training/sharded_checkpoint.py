"""Checkpoints of train.distributed fsdp runs, with torch.distributed.checkpoint (DCP).

Every process writes its own shards of the weights that train and of their optimizer state
(`__R_0.distcp`), process 0 the index (`.metadata`); frozen weights are never written (they come
from the base model). The keys are the names in the model, not in a process's shards, so DCP
reshards on loading: a checkpoint written by 2 processes loads into 1 or 4. The rest of the
checkpoint (RNG and trainer state, the sha256 manifest, the atomic rename) is checkpoint.py's.

Several machines: every process writes into the run directory, so on several nodes it must be on a
filesystem they share (as DCP requires).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from codelora.io.rundir import checkpoint_name
from codelora.training.checkpoint import (RNG, TMP_PREFIX, Checkpoint, CheckpointError, load_tensors, publish, prune,
                                          set_rng_state, write_failed)
from codelora.training.distributed import Dist


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # not strict: the frozen weights are not in the checkpoint (DCP itself refuses a weight that trains
    # and is missing from it)
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def save_sharded(root: Path, step: int, model, optimizer, trainer_state: dict, keep: int, dist: Dist,
                 device: str) -> Path:
    """Write checkpoint `step` (every process takes part); process 0 publishes it and prunes old ones."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{checkpoint_name(step)}-sharded"  # one name for every process
    error = None
    if dist.main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = e
    if dist.any(error is not None, device):  # every process learns that process 0 could not start it
        raise write_failed(tmp, final, error or OSError("process 0 could not create the checkpoint directory"))
    weights, optim = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=tmp)
    if dist.main:
        try:
            publish(tmp, final, step, trainer_state)
        except OSError as e:
            raise write_failed(tmp, final, e) from None
        prune(root, keep)
    dist.barrier()
    return final


def load_sharded(ckpt: Checkpoint, model, optimizer) -> dict:
    """Load the weights that train and the optimizer state into this process's shards; RNG as written by
    process 0 (as for a DDP run). Returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not ckpt.sharded:
        raise CheckpointError(f"checkpoint {ckpt.path} was not written by a train.distributed fsdp run")
    weights, optim = get_state_dict(model, optimizer, options=_options())
    state = {"model": weights, "optim": optim}
    try:
        dcp.load(state, checkpoint_id=ckpt.path)
    except (RuntimeError, ValueError, KeyError) as e:
        detail = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model ({detail}); was it written with "
                              f"another lora config or train.method?") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options())
    set_rng_state(load_tensors(ckpt.path / RNG, "RNG state"))
    return ckpt.state()
