"""Training checkpoints: written atomically, verified by sha256 before use, loaded without pickle.

A checkpoint is a directory `checkpoints/step-00000012/` holding

    adapter_config.json, adapter_model.safetensors   the LoRA weights (a valid peft adapter folder), or
    trainable.safetensors                             the trained weights of a full / top-K run, by name
    optimizer.pt                                      AdamW state (tensors; read with weights_only=True)
    rng_state.pt                                      python, numpy, torch (and CUDA) RNG states
    trainer_state.json                                step, epoch, data position, scheduler, loss log
    checkpoint.json                                   the manifest: sha256 and size of every file above

A train.distributed fsdp run holds `.metadata` and `__R_0.distcp` (torch.distributed.checkpoint:
each process's shards of the weights that train and of the optimizer state) instead of the
weights and optimizer.pt; see sharded_checkpoint.py.

It is written into `checkpoints/.tmp-step-.../`, every file fsynced, and renamed into place: a
reader sees a whole checkpoint or none. Checkpoints are only taken between optimizer steps, so no
half-accumulated gradient ever needs saving: a kill inside an accumulation window replays the
window from its first micro-batch.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codelora.console import say
from codelora.errors import CodeloraError
from codelora.io.files import describe_os_error, sha256_file
from codelora.io.rundir import ADAPTER_FILES, ADAPTER_WEIGHTS, MODEL_CARD, checkpoint_name, step_dirs

FORMAT = 1
MANIFEST = "checkpoint.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng_state.pt"
STATE = "trainer_state.json"
TMP_PREFIX = ".tmp-"
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint


class CheckpointError(CodeloraError):
    """A checkpoint that cannot be used (refused, not merely corrupt)."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    files: dict[str, dict]

    @property
    def sharded(self) -> bool:
        return DCP_METADATA in self.files

    @property
    def complete(self) -> bool:
        return (self.sharded or OPTIMIZER in self.files) and RNG in self.files

    def state(self) -> dict:
        return json.loads((self.path / STATE).read_text(encoding="utf-8"))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


# --- writing ------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),  # (version, tuple of ints, gauss): plain types
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, trainer_state: dict, keep: int) -> Path:
    """Write checkpoint `step` under `root` atomically, then keep only the newest `keep`.

    A failed write (disk full, permission denied) removes its temporary directory, leaves every
    earlier checkpoint untouched and raises a CodeloraError that says so.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if is_peft(model):  # adapter_config.json + adapter_model.safetensors, as a run directory holds them
            model.save_pretrained(tmp, save_embedding_layers=False)
            (tmp / MODEL_CARD).unlink(missing_ok=True)  # peft's model card: not needed in a checkpoint
        else:  # full / top-K: only what trains changes, so only that is saved (tied weights once)
            from safetensors.torch import save_file

            save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      tmp / TRAINABLE)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        publish(tmp, final, step, trainer_state)
    except OSError as e:
        raise write_failed(tmp, final, e) from None
    prune(root, keep)
    return final


def publish(tmp: Path, final: Path, step: int, trainer_state: dict) -> None:
    """Add the RNG and trainer state to the checkpoint being written in `tmp`, list every file with its
    sha256 in the manifest, fsync, and rename it to `final`: a reader sees a whole checkpoint or none."""
    torch.save(rng_state(), tmp / RNG)
    (tmp / STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
    files = {}
    for p in sorted(tmp.iterdir()):
        _fsync(p)
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT, "step": step, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    if final.exists():  # a checkpoint of this step from a run that was cut off after it: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)


def write_failed(tmp: Path, final: Path, e: OSError) -> CodeloraError:
    """Remove the cut-off write; the error says which earlier checkpoint is intact."""
    shutil.rmtree(tmp, ignore_errors=True)
    prev = latest_name(final.parent)
    kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
    return CodeloraError(f"could not write checkpoint {final}: {describe_os_error(e)}; {kept}")


def latest_name(root: Path) -> str | None:
    dirs = step_dirs(root)
    return dirs[-1].name if dirs else None


def prune(root: Path, keep: int) -> None:
    dirs = step_dirs(root)
    for old in dirs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# --- finding and verifying ------------------------------------------------------------------------


def verify(path: Path) -> Checkpoint:
    """Return the checkpoint if its manifest lists the adapter and every listed file matches its sha256."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"no {MANIFEST} (the write was cut off)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files, step = manifest["files"], int(manifest["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST} is unreadable ({e})") from None
    weights = (TRAINABLE,) if TRAINABLE in files else (DCP_METADATA,) if DCP_METADATA in files else ADAPTER_FILES
    missing = [n for n in (*weights, STATE) if n not in files]
    if missing:
        raise ValueError(f"the manifest lists no {', '.join(missing)}")
    for name, meta in files.items():
        p = path / name
        if Path(name).name != name or not p.is_file():
            raise ValueError(f"{name} is missing")
        if p.stat().st_size != meta.get("bytes") or sha256_file(p) != meta.get("sha256"):
            raise ValueError(f"{name} does not match its sha256 in the manifest")
    return Checkpoint(path, step, files)


def find_latest(root: Path) -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies; cut-off or corrupt ones are skipped with a warning."""
    if not root.is_dir():
        return None
    for tmp in root.glob(f"{TMP_PREFIX}*"):
        say(f"warning: removing {tmp.name}, a checkpoint whose write was cut off")
        shutil.rmtree(tmp, ignore_errors=True)
    for path in reversed(step_dirs(root)):
        try:
            return verify(path)
        except ValueError as e:
            say(f"warning: skipping checkpoint {path.name}: {e}; trying an earlier one")
    return None


# --- loading (never unpickles arbitrary objects) --------------------------------------------------


def load_tensors(path: Path, what: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"refusing {path}: the {what} holds objects other than tensors and plain values, which could run code "
            f"when loaded ({type(e).__name__}); it was not loaded"
        ) from None


def load_checkpoint(ckpt: Checkpoint, model, optimizer, allow_partial: bool) -> dict:
    """Restore adapter weights, optimizer and RNG states; return the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not ckpt.complete:
        absent = [n for n in (OPTIMIZER, RNG) if n not in ckpt.files]
        if not allow_partial:
            raise CheckpointError(
                f"checkpoint {ckpt.path} has no {' or '.join(absent)}: resuming would not reproduce the run; "
                f"pass --allow-partial-resume to continue with fresh {'optimizer' if OPTIMIZER in absent else 'RNG'} "
                f"state anyway"
            )
        say(f"warning: resuming from {ckpt.path.name} without {', '.join(absent)} (--allow-partial-resume): "
            f"the result will differ from an uninterrupted run")
    peft_model = is_peft(model)
    name = ADAPTER_WEIGHTS if peft_model else TRAINABLE
    if name not in ckpt.files:
        raise CheckpointError(f"checkpoint {ckpt.path} has no {name}: it was written by another train.method")
    try:
        weights = load_file(ckpt.path / name)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"refusing {ckpt.path}/{name}: {e}") from None
    if peft_model:
        unexpected = getattr(set_peft_model_state_dict(model, weights), "unexpected_keys", [])
    else:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(weights) ^ trainable)  # both ways: a checkpoint of another top-K does not fit
        if not unexpected:
            model.load_state_dict(weights, strict=False)
    if unexpected:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model (weights such as {unexpected[0]} "
                              f"differ); was it written with another lora config or train.method?")
    if OPTIMIZER in ckpt.files:
        optimizer.load_state_dict(load_tensors(ckpt.path / OPTIMIZER, "optimizer state"))
    if RNG in ckpt.files:
        state = load_tensors(ckpt.path / RNG, "RNG state")
        try:
            set_rng_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"refusing {ckpt.path / RNG}: not an RNG state written by codelora ({e})") from None
    return ckpt.state()
