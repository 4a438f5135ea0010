"""The run directory: the one place that names its files, stages it and resumes its chunked stages.

A run directory (`codelora run`/`train`) holds

    config.yaml                      every setting, as resolved (what `eval` and `--resume` read back)
    manifest.json                    what was trained, on what, for how long; written last: a run with
                                     one is complete
    adapter_config.json, adapter_model.safetensors    the LoRA adapter (peft's format)
    splits.json, labels.json, precision.json, loss_log.jsonl, loss_curve.png, trackers.json
    eval_report.{json,md,png}, eval_samples.jsonl     `eval` of the held-out split
    exec_report.{json,md}, exec_pass_at_1.png, exec_samples_MODEL.jsonl, exec_answers.json
    README.md                        the model card
    checkpoints/step-00000012/       while it trains (removed when it completes)

A prepared dataset (`codelora data prepare`), an `improve` directory and the `merge`/`export`
outputs reuse some of these names (manifest.json, report.md), so they are named here too.

Outputs are staged: written as `OUT.partial/`, renamed to `OUT` only when complete. A crash,
Ctrl-C or error leaves no half-written output behind: the partial directory is removed, unless
it holds a training checkpoint, in which case it is kept for `--resume`. A lock file stops two
processes from writing the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from codelora.errors import CodeloraError
from codelora.io.files import write_json_atomic, write_text_atomic

# --- the names ----------------------------------------------------------------------------------

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
# peft's format: every peft adapter folder (a run, a checkpoint, a Hub adapter) holds these two
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
SPLIT_INDICES = "splits.json"  # the row indices of each split
LABELS = "labels.json"
PRECISION = "precision.json"
LOSS_LOG = "loss_log.jsonl"
LOSS_CURVE = "loss_curve.png"
TRACKERS = "trackers.json"
MODEL_CARD = "README.md"  # the Hub's name for a model card (peft writes one too)

EVAL_REPORT = "eval_report.json"
EVAL_REPORT_MD = "eval_report.md"
EVAL_CHART = "eval_report.png"
EVAL_SAMPLES = "eval_samples.jsonl"
EXEC_REPORT = "exec_report.json"
EXEC_REPORT_MD = "exec_report.md"
EXEC_CHART = "exec_pass_at_1.png"
EXEC_ANSWERS = "exec_answers.json"
MERGE_REPORT = "merge_report.json"
EXPORT_REPORT = "export_report.json"
REPORT = "report.json"  # an improve directory's report (a dataset report's stats are stats.json)
REPORT_MD = "report.md"  # an improve directory's report, or a dataset's

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
PARTIAL_SUFFIX = ".partial"
LOCK = ".lock"
SECONDS = "seconds.json"  # a chunked stage's time, summed over its attempts


def exec_samples(model: str) -> str:
    """The per-sample outcomes of one model in an execution evaluation."""
    return f"exec_samples_{model}.jsonl"


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_dirs(checkpoints: Path) -> list[Path]:
    """The checkpoint directories under `checkpoints`, oldest first (the zero-padded names sort by step)."""
    return sorted(p for p in checkpoints.glob(f"{STEP_PREFIX}*") if p.is_dir())


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"the run's {name}")


@dataclass(frozen=True)
class RunDir:
    """A run directory's files by what they are; `run / NAME` for the rest."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    manifest = _file(MANIFEST)
    config = _file(CONFIG)
    adapter_config = _file(ADAPTER_CONFIG)
    adapter_weights = _file(ADAPTER_WEIGHTS)
    checkpoints = _file(CHECKPOINTS)

    @property
    def partial(self) -> Path:
        return partial_dir(self.path)

    def is_complete(self) -> bool:
        """A finished training run: its manifest is written last."""
        return self.manifest.is_file()

    def has_config(self) -> bool:
        return self.config.is_file()

    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    def read_json(self, name: str) -> dict | None:
        """The JSON file `name`, or None when it is absent."""
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text(encoding="utf-8"))


# --- staging --------------------------------------------------------------------------------------


def partial_dir(out: str | Path) -> Path:
    """Where an output is written until it completes (and where checkpoints wait for --resume)."""
    out = Path(out)
    return out.with_name(f"{out.name}{PARTIAL_SUFFIX}")


def has_checkpoint(d: Path) -> bool:
    return any((d / CHECKPOINTS).glob(f"{STEP_PREFIX}*"))


def _lock(d: Path):
    f = open(d / LOCK, "w")
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
    shutil.rmtree(partial / CHECKPOINTS, ignore_errors=True)  # the run is complete: its weights are final
    (partial / LOCK).unlink(missing_ok=True)
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


def _refuse_nonempty(out: Path, overwrite: bool, out_option: str) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CodeloraError(f"output directory {out} already exists and is not empty; pass --overwrite or choose "
                            f"another {out_option}")


@contextlib.contextmanager
def staged_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Yield `OUT.partial/`, which becomes `out` only if the block succeeds (an existing complete
    output is only replaced when `overwrite` is set)."""
    out = Path(out)
    _refuse_nonempty(out, overwrite, "--out")
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


# --- directories continued across runs, stage by stage ---------------------------------------------


def continued_dir(out: Path, settings_name: str, settings: str, overwrite: bool, what: str) -> bool:
    """Claim `out` for a job that is continued in place (not staged) when run again with the same
    settings: `settings` (text) is kept in `out/settings_name`; other settings, or a directory that
    is not such a job, need `overwrite` (which clears it). Returns whether an earlier run is continued.
    `what` names the job in the error ("an improve run")."""
    existing = out / settings_name
    if existing.is_file() and existing.read_text(encoding="utf-8") != settings:
        if not overwrite:
            raise CodeloraError(f"{out} holds {what} with other settings; pass --overwrite to start over "
                                f"or choose another out")
        shutil.rmtree(out)
    elif not existing.is_file() and out.exists() and any(out.iterdir()):
        _refuse_nonempty(out, overwrite, "out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if existing.is_file():
        return True
    write_text_atomic(existing, settings)
    return False


@dataclass
class ChunkedStage:
    """A stage split into `count` chunks that survives a kill -9: chunk i's result (a JSON object)
    is written atomically to `d/chunk-000i.json` when the chunk completes, and a chunk already
    written is skipped when the stage runs again; the stage's result is the chunks' objects merged
    in chunk order. The time spent in the chunks is summed in `d/seconds.json` under `clock`,
    killed attempts included."""

    d: Path
    count: int
    clock: str

    def chunk_file(self, i: int) -> Path:
        return self.d / f"chunk-{i:04d}.json"

    def pending(self) -> list[int]:
        return [i for i in range(self.count) if not self.chunk_file(i).is_file()]

    def run(self, work: Callable[[int, str], dict]) -> dict:
        """`work(i, progress)` for each pending chunk i (progress: "chunk 2/5" of those pending),
        each result written as soon as it is complete; returns the merged results of all chunks."""
        self.d.mkdir(parents=True, exist_ok=True)
        todo = self.pending()
        for n, i in enumerate(todo, 1):
            t0 = time.perf_counter()
            write_json_atomic(self.chunk_file(i), work(i, f"chunk {n}/{len(todo)}"))
            self._add_seconds(time.perf_counter() - t0)  # per chunk: a killed attempt's chunks count
        return self.merged()

    def merged(self) -> dict:
        out = {}
        for i in range(self.count):
            out |= json.loads(self.chunk_file(i).read_text(encoding="utf-8"))
        return out

    def _add_seconds(self, seconds: float) -> None:
        path = self.d / SECONDS
        times = json.loads(path.read_text()) if path.is_file() else {}
        times[self.clock] = round(times.get(self.clock, 0.0) + seconds, 1)
        write_json_atomic(path, times)


def stage_seconds(d: Path) -> dict[str, float]:
    """The seconds a chunked stage in `d` spent, by clock ({} before it has run)."""
    path = d / SECONDS
    return json.loads(path.read_text()) if path.is_file() else {}
