"""Fault tolerance through the real CLI: kill -9 / SIGTERM at exact points, then --resume.

Every run trains the tiny model for 12 optimizer steps (3 epochs x 4 windows of 2 micro-batches),
with LoRA dropout on so the RNG state matters. The micro-batch of step s, part m (1 or 2), is
training call 2 * (s - 1) + m.
"""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codelora.io.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, EVAL_REPORT, LOSS_LOG, MANIFEST, checkpoint_name
import warm

RUNNER = Path(__file__).with_name("fault_runner.py")


def call(step: int, micro: int) -> int:
    return 2 * (step - 1) + micro


def train_cmd(model_dir, data_file, out, save_every=3, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data_file), "--out", str(out), "--epochs", "3",
            "--batch-size", "4", "--set", "train.grad_accum=2", "--lr", "5e-3", "--lora-r", "4", "--lora-alpha", "8",
            "--lora-dropout", "0.1", "--seed", "3", "--save-every", str(save_every), *extra]


def run(args, fault=None, timeout=300):
    env = {**__import__("os").environ, **({"FAULT": fault} if fault else {})}
    return warm.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout,
                    env=env)


def train_losses(run_dir):
    entries = [json.loads(line) for line in (run_dir / LOSS_LOG).read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in entries if e["split"] == "train"]


def assert_same_run(a, b):
    ta, tb = load_file(a / ADAPTER_WEIGHTS), load_file(b / ADAPTER_WEIGHTS)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=0, msg=k)
    la, lb = train_losses(a), train_losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 13))
    for (step, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= 1e-6, (step, x, y)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    from conftest import make_rows, write_jsonl

    d = tmp_path_factory.mktemp("reference")
    data = write_jsonl(d / "rows.jsonl", make_rows(40))
    r = run(train_cmd(tiny_model_dir, data, d / "run", save_every=0))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (d / "run" / CHECKPOINTS).exists()  # a complete run keeps only its final adapter
    return d / "run", data


@pytest.mark.parametrize("case,save_every,kill_at,resumed_from", [
    ("mid-epoch", 3, call(6, 1), 3),  # replays steps 4-5, across the end of epoch 1
    ("inside an accumulation window", 3, call(8, 2), 6),  # one micro-batch of step 8 already backpropagated
    ("right after an epoch boundary", 4, call(9, 1), 8),  # the checkpoint at step 8 ends epoch 2
])
def test_kill_9_then_resume_equals_an_uninterrupted_run(reference, tiny_model_dir, tmp_path, case, save_every,
                                                        kill_at, resumed_from):
    ref, data = reference
    out = tmp_path / "run"
    cmd = train_cmd(tiny_model_dir, data, out, save_every)
    killed = run(cmd, fault=f"loss:{kill_at}:KILL")
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = tmp_path / "run.partial"
    assert not out.exists() and partial.is_dir()

    again = run(cmd)  # without --resume the interrupted run is not silently replaced
    assert again.returncode == 1 and "pass --resume" in again.stderr

    resumed = run([*cmd, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step-{resumed_from:08d}" in resumed.stderr
    assert not partial.exists() and not (out / CHECKPOINTS).exists()
    assert_same_run(ref, out)
    assert json.loads((out / MANIFEST).read_text())["train"]["resumed_from_step"] == resumed_from


def test_a_checkpoint_cut_off_mid_write_is_skipped(reference, tiny_model_dir, tmp_path):
    ref, data = reference
    out = tmp_path / "run"
    cmd = train_cmd(tiny_model_dir, data, out, 3)
    # each checkpoint fsyncs its 6 files, the manifest and the directory (8), then the parent: die
    # inside the second checkpoint (step 6), after 3 of its files
    killed = run(cmd, fault=f"fsync:{9 + 3}:KILL")
    assert killed.returncode == -9
    ckpts = tmp_path / "run.partial" / CHECKPOINTS
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")], list(ckpts.iterdir())
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000003"]

    # and a newer checkpoint whose file was damaged after it was written
    shutil.copytree(ckpts / checkpoint_name(3), ckpts / checkpoint_name(5))
    manifest = json.loads((ckpts / checkpoint_name(5) / "checkpoint.json").read_text())
    manifest["step"] = 5
    (ckpts / checkpoint_name(5) / "checkpoint.json").write_text(json.dumps(manifest))
    with open(ckpts / checkpoint_name(5) / "optimizer.pt", "r+b") as f:
        f.truncate(100)

    resumed = run([*cmd, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "warning: removing .tmp-step-00000006" in resumed.stderr
    assert "warning: skipping checkpoint step-00000005: optimizer.pt does not match its sha256" in resumed.stderr
    assert "resuming from step-00000003" in resumed.stderr
    assert_same_run(ref, out)


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_a_signal_during_a_step_checkpoints_and_exits_0(reference, tiny_model_dir, tmp_path, sig):
    ref, data = reference
    out = tmp_path / "run"
    cmd = train_cmd(tiny_model_dir, data, out, 0)  # no periodic checkpoints: the signal writes the only one
    stopped = run(cmd, fault=f"loss:{call(7, 1)}:{sig}")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert f"SIG{sig} received: finishing this step" in stopped.stderr
    assert "stopped by SIG" + sig + " after step 7 of 12" in stopped.stderr and "Traceback" not in stopped.stderr
    ckpts = tmp_path / "run.partial" / CHECKPOINTS
    assert [p.name for p in ckpts.iterdir()] == ["step-00000007"]  # the step in flight was finished
    hint = [line for line in stopped.stderr.splitlines() if "resume with:" in line][-1]
    resume_argv = shlex.split(hint.split("resume with: ", 1)[1])
    assert resume_argv[0] == "codelora" and resume_argv[-1] == "--resume"

    resumed = run(resume_argv[1:])  # exactly the printed command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(ref, out)

    done = run(resume_argv[1:])
    assert done.returncode == 0 and "already complete; nothing to resume" in done.stderr


def test_resume_refuses_changed_settings(reference, tiny_model_dir, tmp_path):
    _, data = reference
    out = tmp_path / "run"
    assert run(train_cmd(tiny_model_dir, data, out, 2), fault=f"loss:{call(3, 1)}:KILL").returncode == -9
    changed = run([*train_cmd(tiny_model_dir, data, out, 2), "--lr", "1e-3", "--resume"])
    assert changed.returncode == 1
    assert "--resume needs the settings of the interrupted run, but train.lr: 0.005 -> 0.001" in changed.stderr
    assert (tmp_path / "run.partial" / CHECKPOINTS / checkpoint_name(2)).is_dir()  # still there to resume


def test_disk_full_stops_with_a_clear_message_and_keeps_the_previous_checkpoint(reference, tiny_model_dir, tmp_path):
    """A real full disk: a 16 MiB tmpfs (bubblewrap) that fills up just before the second checkpoint."""
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap (bwrap) is not installed; `make install` installs it")
    ref, data = reference
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    out = disk / "run"
    cmd = shlex.join([sys.executable, str(RUNNER), *train_cmd(tiny_model_dir, data, out, 2)])
    script = (f"FAULT=fill:2:{disk} {cmd} 2>{tmp_path}/stderr; echo $? > {tmp_path}/rc; "
              f"rm -f {disk}/filler; cp -a {disk}/run.partial {saved}")
    proc = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--size", str(16 << 20), "--tmpfs", str(disk),
                           "--", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and not (tmp_path / "rc").exists():
        pytest.skip(f"bubblewrap cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    err = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("codelora: error:")]
    assert len(errors) == 1 and "could not write checkpoint" in errors[0] and "step-00000004" in errors[0]
    assert "No space left on device (disk full); the previous checkpoint step-00000002 is intact" in errors[0]
    kept, hint = err.strip().splitlines()[-2:]
    assert kept == f"codelora: checkpoints kept in {disk}/run.partial" and hint.startswith("codelora: resume with:")
    assert "Traceback" not in err

    from codelora.training.checkpoint import find_latest

    ckpts = saved / CHECKPOINTS
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002"]  # no partial write left behind
    assert find_latest(ckpts).step == 2

    # with space again, the run resumes from it and ends as if nothing happened
    real_out = tmp_path / "run"
    shutil.copytree(saved, tmp_path / "run.partial")
    resumed = run([*train_cmd(tiny_model_dir, data, real_out, 2), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-00000002" in resumed.stderr
    assert_same_run(ref, real_out)


@pytest.mark.slow
def test_kill_9_and_resume_on_the_embedded_model(shared_head, tmp_path):
    """The real SmolLM2-135M: kill -9 inside step 3 of 4, resume from the step-2 checkpoint."""
    def cmd(out):
        return ["train", "--data", str(shared_head), "--limit", "40", "--out", str(out), "--max-steps", "4",
                "--batch-size", "2", "--lora-r", "4", "--lora-dropout", "0.05", "--save-every", "2",
                "--set", "data.max_length=128", "--set", "train.max_batch_tokens=4096"]  # one loss call per micro-batch

    ref = run(cmd(tmp_path / "ref"), timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = run(cmd(tmp_path / "run"), fault="loss:3:KILL", timeout=900)
    assert killed.returncode == -9
    resumed = run([*cmd(tmp_path / "run"), "--resume"], timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-00000002" in resumed.stderr
    ta, tb = load_file(tmp_path / "ref" / ADAPTER_WEIGHTS), load_file(tmp_path / "run" / ADAPTER_WEIGHTS)
    assert ta.keys() == tb.keys() and len(ta) == 4 * 30 * 2  # q,k,v,o x 30 layers x (A, B)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=0, msg=k)
    for (s, x), (_, y) in zip(train_losses(tmp_path / "ref"), train_losses(tmp_path / "run"), strict=True):
        assert abs(x - y) <= 1e-6, (s, x, y)


def test_run_resumes_after_training_was_stopped(reference, tiny_model_dir, tmp_path):
    """`run --resume`: training continues from the checkpoint, then the evaluation runs."""
    import yaml

    _, data = reference
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "seed": 2, "model": {"name": str(tiny_model_dir)}, "data": {"source": str(data)},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0}, "train": {"max_steps": 6, "batch_size": 4, "save_every": 0},
        "eval": {"max_new_tokens": 4, "limit": 2},
    }))
    stopped = run(["run", str(config)], fault="loss:4:TERM")
    assert stopped.returncode == 0 and "after step 4 of 6" in stopped.stderr, stopped.stderr[-2000:]
    assert not (tmp_path / "run").exists()
    resumed = run(["run", str(config), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-00000004" in resumed.stderr and "| perplexity |" in resumed.stdout
    report = json.loads((tmp_path / "run" / EVAL_REPORT).read_text())
    assert report["rows_generated"] == 2
    assert [s for s, _ in train_losses(tmp_path / "run")] == list(range(1, 7))
