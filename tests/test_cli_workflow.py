"""train -> eval -> ask through the real console entry point, on a tiny model (seconds)."""

import json

import pytest

from cli_helpers import call_cli, run_cli
from codelora.io.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, EVAL_REPORT, EXEC_CHART, EXEC_REPORT, LOSS_LOG, MANIFEST
import warm


def test_train_eval_ask_on_a_tiny_model(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--model", tiny_model_dir, "--data", data_file, "--out", out, "--max-steps", "3",
                "--lora-r", "2", "--seed", "5", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainable parameters" in r.stderr and "Traceback" not in r.stderr
    assert (out / ADAPTER_WEIGHTS).is_file() and not (out / EVAL_REPORT).exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["seed"] == 5 and manifest["train"]["steps"] == 3

    again = run_cli("train", "--model", tiny_model_dir, "--data", data_file, "--out", out, "--max-steps", "1",
                    timeout=300)
    assert again.returncode == 1 and "already exists" in again.stderr

    r = run_cli("eval", out, "--limit", "2", "--max-new-tokens", "4", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / EVAL_REPORT).read_text())
    assert report["rows_generated"] == 2 and report["rows_for_loss"] == 4
    assert "| perplexity |" in r.stdout

    # ask finds the base model from the run's config.yaml
    r = run_cli("ask", "Write add2.", "--adapter", out, "--max-new-tokens", "4", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_sigterm_from_outside_checkpoints_exits_0_and_resumes(tiny_model_dir, data_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(out), "--max-steps", "100000",
            "--save-every", "0"]
    proc = warm.popen([sys.executable, "-m", "codelora", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training steps are being logged
        log = tmp_path / "run.partial" / LOSS_LOG
        if log.exists() and log.read_text().count('"split": "train"') >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("training never started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM received: finishing this step" in err and "Traceback" not in err
    assert "resume with: codelora train" in err and err.strip().endswith("--resume")
    (ckpt,) = (tmp_path / "run.partial" / CHECKPOINTS).iterdir()
    step = int(ckpt.name.split("-")[1])
    assert step >= 2 and not out.exists()

    # the same command with --resume and fewer total steps is refused: the settings must match
    r = run_cli(*args[:-4], "--max-steps", str(step + 1), "--save-every", "0", "--resume", timeout=300)
    assert r.returncode == 1 and "train.max_steps: 100000 -> " in r.stderr


def test_ctrl_c_before_any_checkpoint_leaves_no_run_directory(tiny_model_dir, data_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "codelora", "train", "--model", str(tiny_model_dir), "--data",
                             str(data_file), "--out", str(out), "--max-steps", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite started in the background (`cmd &` in a
                            # script) hands its children SIGINT ignored, and Python keeps it so
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # a run far longer than the test, so the signal always lands before it ends
    deadline = time.time() + 120
    while not (tmp_path / "run.partial").exists() and time.time() < deadline:  # the run has begun
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # the signal landed inside the loop: that path is tested above
        assert "resume with:" in err
    else:
        assert proc.returncode == 130 and "interrupted; no partial run directory was kept" in err
        assert not out.exists() and not list(tmp_path.glob("run.partial*"))


@pytest.mark.slow
def test_data_report_and_prepare_on_the_real_head(shared_head, tmp_path):
    r = run_cli("data", "report", "--data", shared_head, "--out", tmp_path / "report", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["rows"]["valid"] == 356 and stats["text_equals_concat"]["matches"] == 335
    assert stats["tokens"]["output"]["max"] > 0
    r = run_cli("data", "prepare", "--data", shared_head, "--out", tmp_path / "prep", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # the audit's one pair: the same Ceneo scraper answer in train (line 256) and validation (line 264)
    assert "cross-split pairs: 1" in r.stderr and "lines 256~264: near duplicate answer 0.917" in r.stderr
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 284, "validation": 36, "test": 36}


def test_prepare_fails_on_too_many_bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\nnot json\n{"instruction": "c", "input": "", "output": "d"}\n')
    r = call_cli("data", "prepare", "--data", path, "--out", tmp_path / "prep")
    assert r.returncode == 1 and "1 of 3 rows failed validation (1 malformed JSON)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("codelora: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "prep").exists()


def test_prepare_is_identical_across_processes_and_hash_seeds(data_file, tmp_path):
    import os
    import subprocess
    import sys

    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"prep{seed}"
        r = subprocess.run([sys.executable, "-m", "codelora", "data", "prepare", "--data", str(data_file), "--out",
                            str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed},
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json", "split_report.md"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_eval_refuses_to_execute_without_the_flag(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task_id": "t/1", "instruction": "Write f() returning 1.", "entry_point": "f",
                                 "test": "def check(c):\n    assert c() == 1\n"}) + "\n")
    comps = tmp_path / "c.jsonl"
    comps.write_text(json.dumps({"task_id": "t/1", "completion": "import pathlib\ntry:\n"
                                 f"    pathlib.Path({str(tmp_path / 'ran')!r}).write_text('x')\n"
                                 "except OSError:\n    pass\ndef f():\n    return 1\n"}) + "\n")
    r = call_cli("eval", "--tasks", tasks, "--completions", comps, "--out", tmp_path / "out")
    assert r.returncode == 1 and "needs --allow-code-execution" in r.stderr and "nothing was executed" in r.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    r = call_cli("eval", "--tasks", tasks, "--completions", comps, "--out", tmp_path / "out",
                 "--allow-code-execution")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "out" / EXEC_REPORT).read_text())
    assert report["models"]["completions"]["pass@1"] == 1.0
    assert not (tmp_path / "ran").exists()  # the sandbox could not write outside its own directory


def test_eval_humaneval_completions_through_the_cli(tmp_path):
    from codelora.evaluation.execution import humaneval_tasks

    tasks = humaneval_tasks(limit=10)
    for name, text in (("canonical", None), ("empty", "")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"task_id": t.task_id, "completion": t.canonical if text is None else text})
                                + "\n" for t in tasks))
        r = run_cli("eval", "--suite", "humaneval", "--limit", "10", "--completions", path, "--out", tmp_path / name,
                    "--allow-code-execution", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads((tmp_path / name / EXEC_REPORT).read_text())
        assert report["models"]["completions"]["pass@1"] == (1.0 if text is None else 0.0)
        assert (tmp_path / name / EXEC_CHART).read_bytes()[:4] == b"\x89PNG"
