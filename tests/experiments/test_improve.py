"""`codelora improve`: rounds of sample -> sandbox -> select -> train, on a tiny model that first
learned the answer format (full fine-tuning), so some of its sampled answers pass; kill -9 in
sampling, execution and training, then rerunning, gives the same final adapter."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from cli_helpers import call_cli
from codelora.io.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, CONFIG, MANIFEST, REPORT, REPORT_MD, SECONDS
from conftest import FUNCS, make_rows, write_jsonl
import warm

RUNNER = Path(__file__).resolve().parents[1] / "training" / "fault_runner.py"
OPS = dict(FUNCS)


def _task(name, k, prefix):
    op = OPS[name]
    return {"task_id": f"{prefix}/{name}{k}", "instruction": f"Write a Python function {name}{k}(x) that applies {op} {k} to x.",
            "entry_point": f"{name}{k}",
            "test": f"def check(candidate):\n    assert candidate(7) == 7 {op} {k}\n    assert candidate(2) == 2 {op} {k}\n"}


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """A tiny model fully fine-tuned on the format (the base of improve), tasks, held-out tasks, a config."""
    d = tmp_path_factory.mktemp("improve")
    rows = write_jsonl(d / "rows.jsonl", make_rows(60))
    r = call_cli("train", "--model", tiny_model_dir, "--data", rows, "--out", d / "base", "--epochs", "100", "--set", "train.eval_every=0",
                 "--lr", "3e-3", "--method", "full", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    write_jsonl(d / "tasks.jsonl", [_task(n, k, "t") for n in ("add", "sub", "mul") for k in (2, 3, 4)])
    write_jsonl(d / "heldout.jsonl", [_task("add", 5, "h"), _task("mul", 6, "h")])
    (d / "run.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(d / "base")}, "data": {"source": str(rows)}, "seed": 3,
        "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"}, "train": {"batch_size": 4}}))
    return d


def _config(d: Path, out: Path) -> Path:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({
        "out": str(out), "run_config": str(d / "run.yaml"), "tasks": [str(d / "tasks.jsonl")],
        "heldout": [str(d / "heldout.jsonl")], "rounds": 2, "samples": 8, "keep_per_task": 2, "original_share": 0.8,
        "generate": {"temperature": 1.0, "max_new_tokens": 40}, "eval": {"batch_size": 8}, "device": "cpu",
        "sample_precision": "fp32",
        "set": {"train.epochs": 2, "train.lr": 5e-3, "train.save_every": 1, "train.batch_size": 4}}))
    return path


def _improve(config: Path, fault: str | None = None):
    env = {**__import__("os").environ, **({"FAULT": fault} if fault else {})}
    return warm.run([sys.executable, str(RUNNER), "--quiet", "improve", str(config), "--allow-code-execution"],
                    capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def reference(setting):
    out = setting / "reference"
    r = _improve(_config(setting, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_a_round_trains_on_passing_answers_only_and_reports_every_round(setting, reference):
    report = json.loads((reference / REPORT).read_text())
    assert [(row["round"], row["model"]) for row in report["rows"]] == [(0, "base"), (1, "round-1"), (2, "round-2")]
    samples = json.loads((reference / "round-1" / "samples" / "samples.json").read_text())
    passed = json.loads((reference / "round-1" / "exec" / "passed.json").read_text())
    assert len(samples) == 9 and all(len(v) == 8 for v in samples.values())
    assert sum(map(sum, passed.values())) > 0, "the tiny model should pass some tasks at temperature 1"
    pairs = json.loads((reference / "round-1" / "data" / "pairs.json").read_text())
    per_task = {}
    for p in pairs:  # every pair is one of that task's passing answers' code, none twice, at most m a task
        task_answers = [a for a, ok in zip(samples[p["task_id"]], passed[p["task_id"]]) if ok]
        assert any(p["output"] == f"```python\n{a.split('```python', 1)[-1].split('```')[0].strip(chr(10))}\n```"
                   for a in task_answers), p
        per_task.setdefault(p["task_id"], []).append(p["output"])
    assert all(len(v) == len(set(v)) <= 2 for v in per_task.values())
    manifest = json.loads((reference / "round-1" / "data" / MANIFEST).read_text())
    assert manifest["pairs"] == len(pairs) and manifest["original_rows"] == min(4 * len(pairs), 48)
    # the round's adapter continued from nothing (round 1 starts at the base) and round 2 from round 1's
    cfg2 = yaml.safe_load((reference / "round-2" / "adapter" / CONFIG).read_text())
    assert cfg2["lora"]["init_from"] == str(reference / "round-1" / "adapter")
    row1 = report["rows"][1]
    assert row1["pairs"] == len(pairs) and row1["train_steps"] > 0 and "heldout" in row1["heldout"]
    sampled0 = report["rows"][0]["train_tasks_sampled"]
    assert sampled0["answers_passed"] == sum(map(sum, passed.values()))
    assert (reference / REPORT_MD).read_text().count("| round-") == 2 and (reference / "pass_at_1.png").stat().st_size
    assert report["rows"][2]["train_tasks_sampled"] is not None  # measure_final: the last model sampled too


def test_kill_9_in_sampling_execution_and_training_then_rerun_equals_an_uninterrupted_run(setting, reference):
    out = setting / "killed"
    config = _config(setting, out)
    for fault in ("improve-sample:2:KILL", "improve-exec:2:KILL", "loss:3:KILL"):
        r = _improve(config, fault)
        assert r.returncode == -9, (fault, r.stderr[-3000:])
    assert (out / "round-1" / "adapter.partial" / CHECKPOINTS).is_dir()  # killed inside round 1's training
    # the chunks finished before each kill count toward the stage's seconds
    assert json.loads((out / "round-1" / "samples" / SECONDS).read_text())["sampling"] > 0
    assert json.loads((out / "round-1" / "exec" / SECONDS).read_text())["execution"] > 0
    r = _improve(config)
    assert r.returncode == 0, r.stderr[-3000:]
    for rel in ("round-1/samples/samples.json", "round-1/exec/passed.json", "round-2/samples/samples.json"):
        assert (out / rel).read_text() == (reference / rel).read_text(), rel
    for r_dir in ("round-1", "round-2"):
        a = load_file(reference / r_dir / "adapter" / ADAPTER_WEIGHTS)
        b = load_file(out / r_dir / "adapter" / ADAPTER_WEIGHTS)
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] - b[k]).abs().max().item() <= 1e-6, (r_dir, k)


def test_pick_keeps_the_shortest_or_the_most_diverse():
    from codelora.experiments.improve import pick

    codes = ["return x + 1  # long comment here", "return x+1", "return 1 + x", "return x + 1"]
    assert pick(codes, 2, "shortest") == ["return x+1", "return 1 + x"]
    diverse = pick(codes, 2, "diverse")
    assert diverse[0] == "return x+1" and diverse[1] == "return x + 1  # long comment here"
    assert pick([], 2, "diverse") == []


def test_bad_improve_inputs_are_one_line_errors(setting, tmp_path):
    config = _config(setting, tmp_path / "out")
    r = call_cli("improve", config)
    assert r.returncode == 1 and "needs --allow-code-execution" in r.stderr and not (tmp_path / "out").exists()
    cases = {
        "rounds=0": "improve.rounds must be in [1, 100], got 0",
        "select=random": "improve.select must be one of shortest, diverse",
        "bogus=1": "unknown config field 'improve.bogus'",
        f"heldout=[{setting / 'tasks.jsonl'}]": "held-out suites share tasks with the training tasks",
        "heldout=[humaneval:x]": "'humaneval:N' with N >= 1",
        f"start={tmp_path}": "is not a LoRA run directory",
        "tasks=[/nonexistent/tasks.jsonl]": "tasks file not found: /nonexistent/tasks.jsonl",
        "set={train.lr: -1}": "train.lr must be positive",
        "temperature=0.5": "improve.temperature is now improve.generate.temperature",  # a moved field
        "generate.temperature=0": "improve.generate.temperature must be positive",
        "eval.samples=3": "improve.eval.samples does not apply to improve",
        "train.lr=1": "--set train.lr: improve fields are top-level",
    }
    for assignment, message in cases.items():
        r = call_cli("improve", config, "--allow-code-execution", "--set", assignment)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (assignment, r.stderr)
        assert not (tmp_path / "out").exists(), assignment


@pytest.mark.slow
def test_improve_on_the_embedded_model(embedded_adapter, tmp_path):
    """The real SmolLM2 with a real adapter: one round on three easy tasks; its passing answers train it."""
    easy = [{"task_id": "e/add", "instruction": "Write a Python function add(a, b) that returns the sum of a and b.",
             "entry_point": "add", "test": "def check(c):\n    assert c(2, 3) == 5\n    assert c(-1, 1) == 0\n"},
            {"task_id": "e/square", "instruction": "Write a Python function square(x) that returns x squared.",
             "entry_point": "square", "test": "def check(c):\n    assert c(3) == 9\n    assert c(-2) == 4\n"},
            {"task_id": "e/is_even", "instruction": "Write a Python function is_even(n) that returns True if the "
             "integer n is even and False otherwise.", "entry_point": "is_even",
             "test": "def check(c):\n    assert c(4) is True\n    assert c(7) is False\n"}]
    write_jsonl(tmp_path / "tasks.jsonl", easy)
    write_jsonl(tmp_path / "heldout.jsonl", [_task("add", 5, "h")])
    config = tmp_path / "improve.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "out"), "start": str(embedded_adapter), "tasks": [str(tmp_path / "tasks.jsonl")],
        "heldout": [str(tmp_path / "heldout.jsonl")], "rounds": 1, "samples": 2, "generate": {"max_new_tokens": 96},
        "measure_final": False, "set": {"train.max_steps": 2, "train.save_every": 0, "data.limit": 120}}))
    r = call_cli("improve", config, "--allow-code-execution")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert [row["model"] for row in report["rows"]] == ["base", "start", "round-1"]
    assert report["rows"][1]["train_tasks_sampled"]["answers_passed"] > 0
    assert report["rows"][2]["pairs"] > 0 and report["rows"][2]["train_steps"] == 2
    assert "heldout" in report["rows"][2]["heldout"]
