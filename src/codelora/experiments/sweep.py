"""`codelora sweep SWEEP.yaml`: run a grid of configs one cell after another, resumable.

A sweep file names a base run config, overrides for every cell, and the cells: a `grid` (the
product of value lists over any dotted config fields) and/or an explicit list of `cells` (each a
mapping of dotted fields, with an optional `name`). Every cell is a normal `codelora run` in its
own process, writing `OUT/cells/NAME/` (config, adapter, manifest, eval report) and its log
`OUT/cells/NAME.log`. A finished cell (its run directory is complete) is skipped when the sweep
runs again; a cell that was interrupted continues from its last checkpoint (`--resume`).
After the cells, `sweep.csv`, `sweep.json` and plots are written from what the cells recorded.

    out: runs/sweep-rank          # relative to the current directory, like any --out
    base: ../demo.yaml            # a run config, relative to this file
    set: {train.max_steps: 30}    # dotted overrides for every cell
    grid: {lora.r: [1, 2, 4, 8]}  # one cell per combination
    cells: [{name: attention, lora.target_modules: [q_proj, v_proj]}]
    x: lora.r                     # x axis of the metric plot (default: the first grid field)
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from codelora.config import TrainConfig
from codelora.config_parse import load_config_file, parse_config, set_dotted
from codelora.console import progress
from codelora.errors import ConfigError, CodeloraError
from codelora.io.figures import pyplot, save_figure
from codelora.io.files import write_json_atomic
from codelora.io.rundir import EVAL_REPORT, RunDir, partial_dir

SWEEP_KEYS = {"out", "base", "set", "grid", "cells", "x"}
METRICS = ("eval_loss", "bleu", "rougeL_f1", "syntax_valid", "accuracy", "macro_f1")  # absent ones stay empty


@dataclass
class Cell:
    name: str
    overrides: dict[str, Any]


@dataclass
class Sweep:
    out: Path
    base: dict[str, Any]
    cells: list[Cell]
    x: str | None = None
    results: list[dict] = field(default_factory=list)


def _cell_name(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", "_".join(parts))[:100] or "base"


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    spec = load_config_file(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep field(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(SWEEP_KEYS))}")
    if not spec.get("out"):
        raise ConfigError(f"{path}: 'out' (the sweep directory) is missing")
    base = load_config_file(path.parent / spec["base"]) if spec.get("base") else {}
    for key, value in (spec.get("set") or {}).items():
        set_dotted(base, key, value)
    cells = []
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted config fields to non-empty lists of values")
    if grid:
        for combo in itertools.product(*grid.values()):
            overrides = dict(zip(grid, combo))
            cells.append(Cell(_cell_name(overrides), overrides))
    for i, entry in enumerate(spec.get("cells") or []):
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{path}: cells[{i}] must be a mapping of dotted config fields (and an optional name)")
        entry = dict(entry)
        name = str(entry.pop("name", "")) or _cell_name(entry)
        if not re.fullmatch(r"[A-Za-z0-9._=,+-]{1,100}", name):
            raise ConfigError(f"{path}: cells[{i}].name {name!r} may hold only letters, digits and . _ = , + -")
        cells.append(Cell(name, entry))
    if not cells:
        raise ConfigError(f"{path}: no cells: give a 'grid' and/or a list of 'cells'")
    names = [c.name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: cell names repeat: {', '.join(dupes)}; give the cells distinct names")
    sweep = Sweep(Path(spec["out"]), base, cells, spec.get("x") or (next(iter(grid)) if grid else None))
    for cell in cells:  # every cell must be a valid run config before anything runs
        cell_config(sweep, cell)
    return sweep


def cell_dir(sweep: Sweep, cell: Cell) -> Path:
    return sweep.out / "cells" / cell.name


def cell_config(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    data = copy.deepcopy(sweep.base)
    for key, value in cell.overrides.items():
        set_dotted(data, key, value)
    data["out"] = str(cell_dir(sweep, cell))
    try:
        parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"sweep cell {cell.name}: {e}") from None
    return data


def is_done(run_dir: Path) -> bool:
    return RunDir(run_dir).is_complete() and (run_dir / EVAL_REPORT).is_file()


def run_sweep(path: str | Path, say=print) -> Sweep:
    """Run every unfinished cell, then write the table and plots. Returns the sweep with results."""
    sweep = load_sweep(path)
    (sweep.out / "cells").mkdir(parents=True, exist_ok=True)
    failed = []
    # every cell reports to one MLflow experiment named after the sweep (train.report_to: [mlflow])
    env = os.environ | {"MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME") or sweep.out.name}
    bar = progress(total=len(sweep.cells), desc="sweep", unit="cell")
    for i, cell in enumerate(sweep.cells, 1):
        run_dir = cell_dir(sweep, cell)
        if is_done(run_dir):
            say(f"[{i}/{len(sweep.cells)}] {cell.name}: done already, skipped")
            bar.update(1)
            continue
        config_file = sweep.out / "cells" / f"{cell.name}.yaml"
        config_file.write_text(yaml.safe_dump(cell_config(sweep, cell), sort_keys=False))
        cmd = [sys.executable, "-m", "codelora", "run", str(config_file), "--overwrite"]
        resumed = partial_dir(run_dir).is_dir()
        if resumed:
            cmd.append("--resume")
        say(f"[{i}/{len(sweep.cells)}] {cell.name}: {'resuming' if resumed else 'running'} "
            f"(log: {sweep.out / 'cells' / (cell.name + '.log')})")
        code = _run_child(cmd, sweep.out / "cells" / f"{cell.name}.log", env)
        if code != 0 or not is_done(run_dir):
            failed.append(cell.name)
            say(f"[{i}/{len(sweep.cells)}] {cell.name}: FAILED (exit {code}); see its log")
        bar.update(1)
    bar.close()
    sweep.results = [collect(sweep, cell) for cell in sweep.cells if is_done(cell_dir(sweep, cell))]
    write_outputs(sweep)
    if failed:
        raise CodeloraError(f"{len(failed)} of {len(sweep.cells)} cells failed: {', '.join(failed)}; run the sweep "
                            f"again to retry them (finished cells are skipped)")
    return sweep


def _run_child(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    """Run one cell; SIGTERM/SIGINT are passed on, so the cell checkpoints and stops, then we stop too."""
    with open(log, "a") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    stop = []

    def forward(signum, frame):
        stop.append(signum)
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop:
        e = KeyboardInterrupt()
        e.add_note("sweep stopped; finished cells are kept and the current one checkpointed: run the same "
                   "sweep command again to go on")
        raise e
    return code


def _get(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def collect(sweep: Sweep, cell: Cell) -> dict:
    run_dir = cell_dir(sweep, cell)
    manifest = RunDir(run_dir).read_manifest()
    report = json.loads((run_dir / EVAL_REPORT).read_text())
    row = {"cell": cell.name}
    for key, value in cell.overrides.items():
        row[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    params = manifest.get("parameters", {})
    train = manifest.get("train", {})
    row |= {"trainable_params": params.get("trainable"), "total_params": params.get("total"),
            "train_seconds": train.get("train_seconds"), "tokens_per_s": train.get("tokens_per_s"),
            "val_loss_end": train.get("val_loss_end")}
    models = report.get("models", {})
    tuned = "adapter" if "adapter" in models else "base"  # method none: the base is what it "trained"
    row["method"] = manifest.get("method", TrainConfig.method)  # manifests before train.method: LoRA
    for metric in METRICS:
        if _get(models, f"base.{metric}") is None:
            continue  # a metric of another task kind (text metrics vs classification)
        row[metric] = _get(models, f"{tuned}.{metric}")
        row[f"base_{metric}"] = _get(models, f"base.{metric}")
    return row


def write_outputs(sweep: Sweep) -> None:
    rows = sweep.results
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = sweep.out / "sweep.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sweep.out / "sweep.csv")
    write_json_atomic(sweep.out / "sweep.json", {"cells": [c.name for c in sweep.cells], "x": sweep.x, "rows": rows})
    if rows:
        plot(sweep)


def plot(sweep: Sweep) -> None:
    plt = pyplot()
    rows = sweep.results
    x = sweep.x
    on_x = [r for r in rows if x and isinstance(r.get(x), (int, float)) and not isinstance(r.get(x), bool)]
    figures = []
    if len(on_x) >= 2:  # cells outside the grid (explicit cells without this field) are left out of this plot
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = sorted((r[x], r["eval_loss"]) for r in on_x if r.get("eval_loss") is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="adapter")
        base = [r["base_eval_loss"] for r in rows if r.get("base_eval_loss") is not None]
        if base:
            ax.axhline(base[0], color="grey", linestyle="--", label="base model")
        if x.endswith(".r"):
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x), ax.set_ylabel("eval loss (test split)"), ax.legend(), ax.grid(alpha=0.3)
        figures.append((fig, f"eval_loss_vs_{x.rsplit('.', 1)[-1]}.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get("trainable_params") and r.get("eval_loss") is not None:
            ax.scatter(r["trainable_params"], r["eval_loss"])
            ax.annotate(r["cell"], (r["trainable_params"], r["eval_loss"]), fontsize=7)
    base = [r["base_eval_loss"] for r in rows if r.get("base_eval_loss") is not None]
    if base:  # the untrained model (what a `none` cell measures), for reference
        ax.axhline(base[0], color="grey", linestyle="--", label="base model (no training)")
        ax.legend(fontsize=7)
    ax.set_xscale("log"), ax.set_xlabel("trainable parameters"), ax.set_ylabel("eval loss (test split)")
    ax.grid(alpha=0.3)
    figures.append((fig, "eval_loss_vs_trainable_params.png"))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4))
    ax.bar([r["cell"] for r in rows], [r.get("train_seconds") or 0 for r in rows])
    ax.set_ylabel("training time (s)"), ax.set_title("training time per cell (training loop only)", fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figures.append((fig, "train_seconds.png"))
    for fig, name in figures:
        save_figure(fig, sweep.out / name, dpi=120)
