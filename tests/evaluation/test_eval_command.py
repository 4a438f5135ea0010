"""evaluation/eval_command.py: which evaluation `codelora eval` runs, on which base model, into which folder."""

import pytest
import yaml

from codelora.config import ModelConfig
from codelora.errors import CodeloraError
from codelora.evaluation.eval_command import EvalRequest, base_model, evaluate, report_dir


def test_reports_go_to_out_else_the_run_directory_else_a_folder_named_for_the_suite():
    assert str(report_dir(EvalRequest(suite="humaneval", run_dir="runs/a", out="x"))) == "x"
    assert str(report_dir(EvalRequest(suite="humaneval", run_dir="runs/a"))) == "runs/a"
    assert str(report_dir(EvalRequest(suite="humaneval"))) == "runs/eval-humaneval"
    assert str(report_dir(EvalRequest(tasks="configs/tasks/python_basics.jsonl"))) == "runs/eval-python_basics"


def test_the_base_model_is_the_flag_else_the_first_adapters_base_else_the_embedded_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "some/model", "revision": "v1"}}))
    assert base_model("other/model", [str(run)]) == ModelConfig(name="other/model")
    assert base_model(None, [str(run), "ignored"]) == ModelConfig(name="some/model", revision="v1")
    assert base_model(None, []) == ModelConfig()


@pytest.mark.parametrize("request_, message", [
    (EvalRequest(), "give a RUN_DIR (text metrics on its test split) or --suite humaneval / --tasks FILE"),
    (EvalRequest(run_dir="r", adapters=["a"]), "--completions and --adapter go with --suite humaneval or --tasks FILE"),
    (EvalRequest(suite="humaneval", completions="c.jsonl", ggufs=["m.gguf"]), "it does not go with --gguf"),
    (EvalRequest(suite="humaneval", tasks="t.jsonl"), "choose one of --suite humaneval and --tasks FILE"),
    (EvalRequest(suite="humaneval", overrides={"eval.limit": 0}), "eval.limit must be at least 1, got 0"),
    (EvalRequest(suite="humaneval", overrides={"eval.limit": 2}), "needs --allow-code-execution"),
])
def test_inputs_are_checked_before_anything_runs(request_, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CodeloraError) as e:
        evaluate(request_)
    assert message in str(e.value)
    assert not any(tmp_path.iterdir()), "nothing written"
