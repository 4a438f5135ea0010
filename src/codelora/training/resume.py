"""--resume: the settings must be those of the interrupted run, and it continues from its newest
verified checkpoint (`loop.restore` loads that checkpoint's state)."""

from __future__ import annotations

from pathlib import Path

from codelora.config import RunConfig
from codelora.config_parse import flatten_config, load_config_file
from codelora.console import say
from codelora.errors import CodeloraError
from codelora.io.rundir import CHECKPOINTS, CONFIG
from codelora.training.checkpoint import Checkpoint, find_latest
from codelora.training.distributed import Dist

# Config fields that may change between an interrupted run and its resumption (a moved run
# directory, another checkpoint interval, other evaluation or decoding settings): they do not
# change what is computed.
RESUMABLE_CHANGES = ("out", "eval.", "generate.", "train.save_every", "train.keep_checkpoints")


def check_same_config(cfg: RunConfig, run_dir: Path) -> None:
    saved_path = run_dir / CONFIG
    if not saved_path.is_file():
        return
    saved, now = flatten_config(load_config_file(saved_path)), flatten_config(cfg.to_dict())
    diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
             if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        raise CodeloraError(f"--resume needs the settings of the interrupted run, but {'; '.join(diffs)}; "
                            f"run the original command with --resume, or pass --overwrite to start over")


def find_checkpoint(run_dir: Path, dist: Dist) -> Checkpoint | None:
    """The newest verified checkpoint of `run_dir`, the same on every process; None: train from step 0."""
    checkpoint = None
    # rank 0 looks first: it removes cut-off checkpoint writes before the others list the folder
    if dist.main:
        checkpoint = find_latest(run_dir / CHECKPOINTS)
    dist.barrier()
    if not dist.main:
        checkpoint = find_latest(run_dir / CHECKPOINTS)
    if checkpoint is None:
        say(f"nothing to resume in {run_dir}: no verified checkpoint; training from step 0")
    return checkpoint
