"""`codelora launch`: torchrun's launcher with bounded waits. A machine that never joins, a rendezvous
address that does not resolve and a process killed mid-run each end the launch within its timeout with
one line naming the cause (and the checkpoint to resume from), never a hang."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import call_cli
from codelora.io.rundir import CHECKPOINTS, partial_dir
from net_helpers import free_port
import warm

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(model_dir, data_file, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data_file), "--out", str(out), "--batch-size", "4",
            "--lora-r", "4", "--set", "train.distributed=fsdp", *extra]


def launch(*args, timeout=120):
    return warm.run([sys.executable, "-m", "codelora", "launch", *map(str, args)], capture_output=True, text=True,
                    timeout=timeout, env=ENV)


def last_line(r):
    return r.stderr.strip().splitlines()[-1]


def test_a_machine_that_never_joins_ends_the_launch_in_one_line(tiny_model_dir, data_file, tmp_path):
    t0 = time.monotonic()
    r = launch("--nnodes", 2, "--nproc-per-node", 1, "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
               "--join-timeout-s", 3, *train(tiny_model_dir, data_file, tmp_path / "run", "--max-steps", 2))
    assert r.returncode == 1 and time.monotonic() - t0 < 60
    assert last_line(r).startswith("codelora: error: the rendezvous at 127.0.0.1:") and "gave up after 3 s" in \
        last_line(r) and "not all 2 machines joined" in last_line(r), r.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_a_rendezvous_address_that_does_not_resolve_is_one_line(tiny_model_dir, data_file, tmp_path):
    r = launch("--nnodes", 2, "--rdzv-endpoint", "nohost.invalid:29500", "--join-timeout-s", 2,
               *train(tiny_model_dir, data_file, tmp_path / "run", "--max-steps", 2))
    assert r.returncode == 1
    assert last_line(r).startswith("codelora: error: the rendezvous at nohost.invalid:29500 failed") and \
        "check --rdzv-endpoint HOST:PORT" in last_line(r), r.stderr[-2000:]


def test_bad_launch_settings_are_refused_before_anything_starts(tiny_model_dir, data_file, tmp_path):
    r = call_cli("launch", "--nnodes", "2", *train(tiny_model_dir, data_file, tmp_path / "run"))
    assert r.returncode == 1 and "--rdzv-endpoint must be HOST:PORT" in r.stderr
    r = call_cli("launch", "eval", "runs/x")
    assert r.returncode == 1 and "codelora launch runs train or run" in r.stderr
    r = call_cli("launch", *train(tiny_model_dir, data_file, tmp_path / "run", "--lora-r", "0"))
    assert r.returncode == 1 and "lora.r" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def launch_until_a_checkpoint(model_dir, data_file, out):
    """`codelora launch` of 2 processes training for long; returns it once its first checkpoint is on disk."""
    p = warm.popen([sys.executable, "-m", "codelora", "launch", "--nproc-per-node", "2",
                    *train(model_dir, data_file, out, "--max-steps", "2000", "--save-every", "5")],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (partial_dir(out) / CHECKPOINTS).is_dir() or not any((partial_dir(out) / CHECKPOINTS).glob("step-*")):
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            raise AssertionError(f"no checkpoint was written: {p.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return p


def test_a_process_killed_mid_run_ends_the_launch_naming_the_checkpoint(tiny_model_dir, data_file, tmp_path):
    p = launch_until_a_checkpoint(tiny_model_dir, data_file, tmp_path / "run")
    try:
        workers = _children(p.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    line = err.strip().splitlines()[-1]
    assert p.returncode == 1 and line.startswith("codelora: error: process ") and "ended with" in line, err[-2000:]
    assert "resume from checkpoint step-" in line and "the same command with --resume" in line, line


def test_sigterm_to_the_launch_checkpoints_every_process_and_exits_0(tiny_model_dir, data_file, tmp_path):
    p = launch_until_a_checkpoint(tiny_model_dir, data_file, tmp_path / "run")
    try:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    lines = err.strip().splitlines()
    assert p.returncode == 0, err[-2000:]
    assert lines[-2].startswith("codelora: stopped by SIGTERM; resume from checkpoint step-"), lines[-2]
    assert lines[-1].startswith("codelora: resume with: codelora launch --nproc-per-node 2 train ") and \
        lines[-1].endswith(" --resume"), lines[-1]
    step = lines[-2].split("checkpoint ")[1].split()[0]
    assert (partial_dir(tmp_path / "run") / CHECKPOINTS / step / ".metadata").is_file()  # every shard written
