"""Staged output directories: written as `OUT.partial/`, renamed to `OUT` only when complete.

A crash, Ctrl-C or error leaves no half-written output behind: the partial directory is removed,
unless it holds a training checkpoint, in which case it is kept for `--resume`. A lock file
stops two processes from writing the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from codelora.errors import CodeloraError


def partial_dir(out: str | Path) -> Path:
    """Where an output is written until it completes (and where checkpoints wait for --resume)."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def has_checkpoint(d: Path) -> bool:
    return any((d / "checkpoints").glob("step-*"))


def _lock(d: Path):
    f = open(d / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CodeloraError(f"another codelora process is writing {d}; wait for it or stop it first") from None
    return f


def _claim(partial: Path, overwrite: bool, resume: bool):
    """Lock `partial`, clearing an earlier attempt unless it is being resumed; returns the lock."""
    if partial.is_dir():
        lock = _lock(partial)  # refuse to touch a run another process is writing
        if resume:
            return lock
        lock.close()
        if has_checkpoint(partial) and not overwrite:
            raise CodeloraError(f"{partial} holds an interrupted run with checkpoints; pass --resume to continue it "
                                f"or --overwrite to start over")
        shutil.rmtree(partial)
    partial.mkdir()
    return _lock(partial)


def _publish(partial: Path, out: Path) -> None:
    """Move the finished `partial` into place, replacing an older `out` only after it is complete."""
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the run is complete: its weights are final
    (partial / ".lock").unlink(missing_ok=True)
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


@contextlib.contextmanager
def staged_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Yield `OUT.partial/`, which becomes `out` only if the block succeeds (an existing complete
    output is only replaced when `overwrite` is set)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CodeloraError(f"output directory {out} already exists and is not empty; pass --overwrite or choose "
                            f"another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_dir(out)
    lock = _claim(partial, overwrite, resume)
    try:
        yield partial
    except BaseException:
        if not has_checkpoint(partial):
            shutil.rmtree(partial, ignore_errors=True)
        lock.close()
        raise
    try:
        _publish(partial, out)
    finally:
        lock.close()
