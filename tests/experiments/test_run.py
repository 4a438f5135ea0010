"""`codelora run` as a library call: train into a staged directory, then evaluate; refusals before training."""

import json

import pytest

from codelora.config_parse import parse_config
from codelora.errors import CodeloraError
from codelora.experiments.run import RunOptions, run
from codelora.io.rundir import ADAPTER_WEIGHTS, EVAL_REPORT, partial_dir


def _cfg(tiny_model_dir, data_file, out, **sections):
    return parse_config({"out": str(out), "model": {"name": str(tiny_model_dir)}, "data": {"source": str(data_file)},
                         "train": {"max_steps": 2, "batch_size": 4}, "generate": {"max_new_tokens": 4},
                         "eval": {"limit": 2, "batch_size": 2}, **sections})


def test_run_trains_then_evaluates_and_train_only_trains(tiny_model_dir, data_file, tmp_path):
    result = run(_cfg(tiny_model_dir, data_file, tmp_path / "run"), RunOptions())
    assert result.run_dir == tmp_path / "run" and result.exec_report is None
    assert set(result.report["models"]) == {"base", "adapter"} and result.report["max_new_tokens"] == 4
    assert json.loads((tmp_path / "run" / EVAL_REPORT).read_text()) == result.report
    assert not partial_dir(tmp_path / "run").exists()

    trained = run(_cfg(tiny_model_dir, data_file, tmp_path / "train"), RunOptions(evaluate=False))
    assert trained.report is None and (tmp_path / "train" / ADAPTER_WEIGHTS).is_file()
    assert not (tmp_path / "train" / EVAL_REPORT).exists()


def test_code_execution_is_refused_before_training(tiny_model_dir, data_file, tmp_path):
    cfg = _cfg(tiny_model_dir, data_file, tmp_path / "run", **{"eval": {"tasks": "humaneval", "tasks_limit": 1}})
    with pytest.raises(CodeloraError, match="needs --allow-code-execution"):
        run(cfg, RunOptions())
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # nothing trained, nothing written
    with pytest.raises(CodeloraError, match="--allow-partial-resume goes with --resume"):
        run(cfg, RunOptions(allow_partial_resume=True))
