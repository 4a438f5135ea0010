"""train.report_to: TensorBoard and MLflow receive the run, read back with their own readers
(TensorBoard's EventAccumulator, mlflow.MlflowClient on the SQLite store), and a kill -9 + --resume
run leaves one value per step in both."""

import json
import os
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli
from codelora.io.rundir import EVAL_REPORT, LOSS_LOG
import warm

RUNNER = Path(__file__).parents[1] / "training" / "fault_runner.py"
TRACKERS = "train.report_to=[tensorboard,mlflow]"


def train_args(model_dir, data_file, out, *extra):
    return ["--model", str(model_dir), "--data", str(data_file), "--out", str(out), "--max-steps", "8",
            "--batch-size", "4", "--lr", "5e-3", "--lora-r", "4", "--seed", "3", "--set", "train.eval_every=3",
            "--set", TRACKERS, *extra]


def loss_log(run_dir: Path, split: str) -> list[tuple[int, float]]:
    entries = [json.loads(line) for line in (run_dir / LOSS_LOG).read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in entries if e["split"] == split]


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def mlflow_runs(store_dir: Path, experiment: str = "codelora"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_same_values(tracked, logged, tol=1e-6):
    """One value per step, the steps of loss_log.jsonl, the same losses (TensorBoard keeps float32)."""
    assert [s for s, _ in tracked] == [s for s, _ in logged], (tracked, logged)
    for (step, a), (_, b) in zip(tracked, logged):
        assert abs(a - b) <= tol * max(1.0, abs(b)), (step, a, b)


def test_run_reports_to_tensorboard_and_mlflow(tiny_model_dir, data_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("eval:\n  limit: 2\ngenerate:\n  max_new_tokens: 8\n")
    out = tmp_path / "runs" / "tracked"
    r = run_cli("run", config, *train_args(tiny_model_dir, data_file, out))
    assert r.returncode == 0, r.stderr[-3000:]
    train, val = loss_log(out, "train"), loss_log(out, "validation")
    assert [s for s, _ in train] == list(range(1, 9)) and [s for s, _ in val] == [0, 3, 6, 8]
    report = json.loads((out / EVAL_REPORT).read_text())

    assert_same_values(tensorboard_scalars(out, "train/loss"), train, tol=1e-6)
    assert_same_values(tensorboard_scalars(out, "validation/loss"), val, tol=1e-6)
    [(step, tb_eval)] = tensorboard_scalars(out, "eval/adapter/eval_loss")
    assert step == 8 and abs(tb_eval - report["models"]["adapter"]["eval_loss"]) < 1e-5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out))
    acc.Reload()
    assert acc.PluginTagToContent("hparams"), "the resolved config is written for the HParams view"

    client, runs = mlflow_runs(out.parent)  # the SQLite store sits in the run directory's parent
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert_same_values(mlflow_history(client, run.info.run_id, "train/loss"), train, tol=0)
    assert_same_values(mlflow_history(client, run.info.run_id, "validation/loss"), val, tol=0)
    lrs = [e["lr"] for e in map(json.loads, (out / LOSS_LOG).read_text().splitlines()) if "lr" in e]
    assert [v for _, v in mlflow_history(client, run.info.run_id, "train/learning_rate")] == lrs
    assert run.data.metrics["eval/adapter/eval_loss"] == report["models"]["adapter"]["eval_loss"]
    assert run.data.metrics["eval/base/bleu"] == report["models"]["base"]["bleu"]
    assert run.data.params["lora.r"] == "4" and run.data.params["train.lr"] == "0.005"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "eval_report.json", "eval_report.md",
            "eval_report.png", "loss_curve.png", "config.yaml"} <= artifacts
    assert not any(a.startswith(("checkpoints", "events.out")) for a in artifacts)


def test_kill_9_then_resume_continues_the_same_tracker_runs_without_duplicate_steps(tiny_model_dir, data_file,
                                                                                    tmp_path):
    out = tmp_path / "runs" / "resumed"
    cmd = ["train", *train_args(tiny_model_dir, data_file, out, "--save-every", "3")]
    env = os.environ | {"FAULT": "loss:6:KILL"}  # 8 rows x 4 per batch: training call 6 is step 6 (after step 5)
    killed = warm.run([sys.executable, str(RUNNER), *cmd], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = out.with_name("resumed.partial")
    before = loss_log(partial, "train")
    assert [s for s, _ in before] == [1, 2, 3, 4, 5]  # steps 4-5 were sent to the trackers after the checkpoint
    client, runs = mlflow_runs(out.parent)
    assert [s for s, _ in mlflow_history(client, runs[0].info.run_id, "train/loss")] == [1, 2, 3, 4, 5]

    resumed = warm.run([sys.executable, str(RUNNER), *cmd, "--resume"], capture_output=True, text=True,
                       timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-00000003" in resumed.stderr and "continuing MLflow run" in resumed.stderr
    train, val = loss_log(out, "train"), loss_log(out, "validation")
    assert [s for s, _ in train] == list(range(1, 9))
    assert_same_values(tensorboard_scalars(out, "train/loss"), train)
    assert_same_values(tensorboard_scalars(out, "validation/loss"), val)
    client, runs = mlflow_runs(out.parent)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, finished
    assert_same_values(mlflow_history(client, runs[0].info.run_id, "train/loss"), train)
    assert_same_values(mlflow_history(client, runs[0].info.run_id, "validation/loss"), val)


def test_a_sweep_logs_each_cell_as_a_run_of_one_experiment(tiny_model_dir, data_file, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{source: {data_file}}}\n"
                    "train: {max_steps: 2, batch_size: 8, report_to: [mlflow]}\n"
                    "eval: {limit: 1}\ngenerate: {max_new_tokens: 4}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"out: {tmp_path / 'sweep-r'}\nbase: base.yaml\ngrid: {{lora.r: [2, 4]}}\n")
    r = run_cli("sweep", sweep)
    assert r.returncode == 0, r.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path / "sweep-r" / "cells", experiment="sweep-r")
    assert sorted(run.info.run_name for run in runs) == ["r=2", "r=4"]
    assert sorted(run.data.params["lora.r"] for run in runs) == ["2", "4"]
    assert all(run.info.status == "FINISHED" and "eval/adapter/eval_loss" in run.data.metrics for run in runs)


@pytest.mark.parametrize("tracker,extra", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_tracker_library_is_one_line_naming_the_extra(tiny_model_dir, data_file, tmp_path, tracker, extra):
    hidden = "mlflow" if tracker == "mlflow" else "torch.utils.tensorboard"
    code = (f"import sys; sys.modules[{hidden!r}] = None\n"  # as if the library were not installed
            "from codelora.cli import main\nsys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    r = warm.run([sys.executable, "-c", code, "train", "--model", str(tiny_model_dir), "--data", str(data_file),
                  "--out", str(out), "--max-steps", "1", "--set", f"train.report_to=[{tracker}]"],
                 capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (f"codelora: error: train.report_to includes {tracker}, which needs "
                                                 f"its library: pip install 'codelora[{extra}]'")
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_an_unknown_tracker_is_refused_in_one_line(tiny_model_dir, data_file, tmp_path):
    r = run_cli("train", "--model", tiny_model_dir, "--data", data_file, "--out", tmp_path / "run",
                "--set", "train.report_to=[wandb]")
    assert r.returncode == 1
    assert r.stderr.strip() == ("codelora: error: train.report_to: unknown tracker 'wandb'; choose from "
                                "tensorboard, mlflow")


def test_an_unusable_mlflow_store_is_one_line_before_training(tiny_model_dir, data_file, tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database")  # the store beside the run directory
    out = tmp_path / "run"
    r = run_cli("train", "--model", tiny_model_dir, "--data", data_file, "--out", out, "--max-steps", "1",
                "--set", "train.report_to=[mlflow]")
    assert r.returncode == 1
    store = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"codelora: error: train.report_to mlflow: cannot use the MLflow store {store}: DatabaseError: ")
    assert "trained" not in r.stderr and not out.exists() and not out.with_name("run.partial").exists()
