"""The trackers of a run, behind one small interface, and what a run sends them.

Metric names are the same in every tracker: `train/loss`, `train/learning_rate`,
`train/tokens_per_s`, `validation/loss` per step (from the entries of loss_log.jsonl), then
`eval/<model>/<metric>` and `exec/<model>/pass_at_<k>` at the last step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from codelora.config import RunConfig
from codelora.config_parse import flatten_config
from codelora.errors import ConfigError
from codelora.io.rundir import CHECKPOINTS, LOCK, TRACKERS
from codelora.tracking.mlflow_log import MlflowTracker
from codelora.tracking.tensorboard_log import TensorBoardTracker

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> the codelora extra that installs it
# the metrics that TensorBoard's hparams view shows beside the config
KEY_METRICS = ("train/loss", "validation/loss", "eval/adapter/eval_loss", "eval/adapter/bleu",
               "exec/adapter/pass_at_1")


class Tracker(Protocol):
    def start(self, history: list[dict[str, float | int]]) -> None:
        """Begin (or continue) the tracker run; `history`: (step, metrics) already in loss_log.jsonl."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifacts(self, files: list[Path]) -> None: ...

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (stopped by a signal, resumable)."""


@dataclass
class Trackers:
    """All trackers of a run; with none, every call does nothing."""

    trackers: list[Tracker] = field(default_factory=list)

    def start(self, history: list[dict]) -> None:
        """Called when the loop begins (history []) or resumes from a checkpoint (its loss log).
        Steps logged after the checkpoint by the process that died are not logged twice."""
        steps = [(e["step"], entry_metrics(e)) for e in history]
        for t in self.trackers:
            t.start(steps)

    def log_entry(self, entry: dict) -> None:
        """One entry of loss_log.jsonl, as it is written."""
        for t in self.trackers:
            t.log(entry_metrics(entry), entry["step"])

    def log_evaluation(self, report: dict | None, exec_report: dict | None, step: int) -> None:
        metrics = evaluation_metrics(report, exec_report)
        if metrics:
            for t in self.trackers:
                t.log(metrics, step)

    def log_artifacts(self, run_dir: Path) -> None:
        files = artifact_files(run_dir)
        for t in self.trackers:
            t.log_artifacts(files)

    def finish(self, status: str) -> None:
        for t in self.trackers:
            t.finish(status)


def entry_metrics(entry: dict) -> dict[str, float]:
    """The tracker metrics of one loss_log.jsonl entry."""
    if entry["split"] == "validation":
        return {"validation/loss": entry["loss"]}
    names = {"loss": "train/loss", "lr": "train/learning_rate", "tokens_per_s": "train/tokens_per_s"}
    return {name: float(entry[key]) for key, name in names.items() if entry.get(key) is not None}


def evaluation_metrics(report: dict | None, exec_report: dict | None) -> dict[str, float]:
    """eval_report.json's numeric metrics per model, and exec_report.json's pass@k per model."""
    out = {}
    for model, metrics in ((report or {}).get("models") or {}).items():
        out |= {f"eval/{model}/{k}": float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"}
    for model, entry in ((exec_report or {}).get("models") or {}).items():
        out |= {f"exec/{model}/{k.replace('@', '_at_')}": float(v) for k, v in entry.items()
                if k.startswith("pass@") and isinstance(v, (int, float))}
    return out


def artifact_files(run_dir: Path) -> list[Path]:
    """What a run leaves for others: weights, configs, reports, charts, logs; not its checkpoints,
    the TensorBoard event files or the tracker state."""
    skip = {CHECKPOINTS, LOCK, TRACKERS}
    return sorted(p for p in run_dir.iterdir()
                  if p.name not in skip and not p.name.startswith("events.out.tfevents."))


def flat_config(cfg: RunConfig) -> dict[str, str | int | float | bool]:
    """The resolved config as dotted keys with scalar values (what trackers take as params)."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
            for k, v in flatten_config(cfg.to_dict()).items()}


def open_trackers(cfg: RunConfig, run_dir: Path, run_name: str) -> Trackers:
    """The trackers cfg.train.report_to asks for, ready to `start`; a missing library is a
    ConfigError naming the extra. State shared across a resume lives in run_dir/trackers.json."""
    trackers: list[Tracker] = []
    for name in cfg.train.report_to:
        require_extra(name)
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(run_dir, flat_config(cfg), KEY_METRICS))
        else:
            trackers.append(MlflowTracker(run_dir, run_name, flat_config(cfg)))
    return Trackers(trackers)


def require_extra(name: str) -> None:
    module = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow"}[name]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"train.report_to includes {name}, which needs its library: "
                          f"pip install 'codelora[{EXTRAS[name]}]'") from None
