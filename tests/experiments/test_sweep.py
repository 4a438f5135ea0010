"""`codelora sweep`: a grid of real runs on the tiny model, killed and restarted."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cli_helpers import run_cli
from codelora.io.rundir import EVAL_REPORT, MANIFEST
import warm

# tiny model: hidden 64, q,o 64x64, k,v 64x32 (d_in x d_out), gate/up 64x128, down 128x64; 2 blocks
QKVO = 64 + 64 + 64 + 32 + 64 + 32 + 64 + 64  # sum of d_in + d_out over q, k, v, o


@pytest.fixture
def sweep_file(tmp_path, tiny_model_dir, data_file):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_model_dir)}, "data": {"source": str(data_file)},
        "train": {"max_steps": 2, "batch_size": 4}, "eval": {"limit": 2, "batch_size": 2}, "generate": {"max_new_tokens": 4},
    }))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "sweep"), "base": "base.yaml", "set": {"lora.alpha": 8},
        "grid": {"lora.r": [2, 4]},
        "cells": [{"name": "mlp-last", "lora.target_modules": ["gate_proj", "up_proj", "down_proj"],
                   "lora.layers_to_transform": [1]}],
    }))
    return path


def test_sweep_runs_every_cell_and_a_restart_skips_finished_ones(sweep_file, tmp_path):
    out = tmp_path / "sweep"
    # start the sweep in its own process group, kill it all (-9) once the first cell has finished
    proc = warm.popen([sys.executable, "-m", "codelora", "sweep", str(sweep_file)], start_new_session=True,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "cells" / "r=2"
    deadline = time.monotonic() + 300
    while not (first / EVAL_REPORT).is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "cells" / "mlp-last").exists()
    stamp = (first / MANIFEST).stat().st_mtime_ns

    r = run_cli("sweep", sweep_file)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/3] r=2: done already, skipped" in r.stderr
    assert "[2/3] r=4: " in r.stderr and "[3/3] mlp-last: running" in r.stderr
    assert (first / MANIFEST).stat().st_mtime_ns == stamp  # not rerun

    with open(out / "sweep.csv") as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["r=2", "r=4", "mlp-last"]
    # trainable parameters = r x (d_in + d_out) per adapted matrix, exactly
    assert int(rows["r=2"]["trainable_params"]) == 2 * 2 * QKVO
    assert int(rows["r=4"]["trainable_params"]) == 2 * 4 * QKVO
    assert int(rows["mlp-last"]["trainable_params"]) == 1 * 16 * ((64 + 128) + (64 + 128) + (128 + 64))
    for row in rows.values():
        assert float(row["eval_loss"]) > 0 and float(row["train_seconds"]) > 0 and row["base_eval_loss"]
    data = json.loads((out / "sweep.json").read_text())
    assert data["x"] == "lora.r" and len(data["rows"]) == 3
    for plot in ("eval_loss_vs_r.png", "eval_loss_vs_trainable_params.png", "train_seconds.png"):
        assert (out / plot).stat().st_size > 5000

    r = run_cli("sweep", sweep_file)  # all done: nothing runs, the table is rewritten
    assert r.returncode == 0 and r.stderr.count("done already, skipped") == 3


def test_a_bad_cell_is_refused_before_anything_runs(sweep_file, tmp_path):
    spec = yaml.safe_load(sweep_file.read_text())
    spec["cells"].append({"name": "zero", "lora.r": 0})
    sweep_file.write_text(yaml.safe_dump(spec))
    r = run_cli("sweep", sweep_file)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "sweep cell zero: lora.r must be at least 1, got 0" in r.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("change, message", [
    ({"grids": {}}, "unknown sweep field(s) grids"),
    ({"grid": {"lora.r": []}}, "'grid' must map dotted config fields to non-empty lists"),
    ({"grid": {}, "cells": []}, "no cells"),
    ({"cells": [{"name": "a b", "lora.r": 2}]}, "may hold only"),
    ({"cells": [{"name": "r=2", "lora.r": 3}]}, "cell names repeat: r=2"),
    ({"grid": {"lora.rank": [2]}}, "unknown config field 'lora.rank'"),
])
def test_sweep_file_errors_are_one_line(sweep_file, change, message):
    spec = yaml.safe_load(sweep_file.read_text()) | change
    sweep_file.write_text(yaml.safe_dump(spec))
    r = run_cli("sweep", sweep_file)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


SWEEPS = sorted((__import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweeps_parse_and_give_their_command(path):
    from codelora.experiments.sweep import load_sweep

    sweep = load_sweep(path)  # every cell is a valid run config
    assert len(sweep.cells) >= 3 and str(sweep.out).startswith("runs/")
    assert f"codelora sweep configs/sweeps/{path.name}" in path.read_text().split("\n\n")[0]


def test_rank_sweep_covers_1_to_64():
    from codelora.experiments.sweep import load_sweep

    sweep = load_sweep(next(p for p in SWEEPS if p.stem == "rank"))
    assert [c.overrides["lora.r"] for c in sweep.cells] == [1, 2, 4, 8, 16, 32, 64]
    assert all(c.overrides["lora.alpha"] == 2 * c.overrides["lora.r"] for c in sweep.cells)
