"""`codelora run` and `codelora ask` with the real embedded SmolLM2-135M, as a user runs them."""

import json

import pytest
import torch

from cli_helpers import run_cli
from conftest import SHARED_HEAD
from codelora.io.rundir import ADAPTER_CONFIG, CONFIG, EVAL_REPORT, EXEC_ANSWERS, EXEC_REPORT, MANIFEST, MODEL_CARD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e2e_run(embedded_run):
    """The session's real run of configs/demo.yaml (tests/conftest.py: embedded_run)."""
    return embedded_run.path, embedded_run


def test_run_writes_every_output(e2e_run):
    run, result = e2e_run
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "manifest.json", "loss_log.jsonl",
                 "loss_curve.png", "splits.json", "eval_report.json", "eval_report.md", "eval_samples.jsonl"):
        assert (run / name).is_file(), name
    assert "| eval loss (answer tokens) |" in result.stdout
    report = json.loads((run / EVAL_REPORT).read_text())
    assert report["rows_generated"] == 4 and set(report["models"]) == {"base", "adapter"}
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["model"]["kind"] == "embedded" and manifest["parameters"]["trainable"] == 1_843_200
    # named by the Hub model the embedded one is a copy of: loadable by anyone, no path on this machine
    assert json.loads((run / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "trainable parameters 1,843,200 of 136,358,208" in result.stderr
    exec_report = json.loads((run / EXEC_REPORT).read_text())  # `run` also ran eval.tasks
    assert set(exec_report["models"]) == {"base", "adapter"} and exec_report["tasks"] == 2
    assert "| model | tasks | samples | pass@1 |" in result.stdout
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / MODEL_CARD, ignore_metadata_errors=False)  # the card shows pass@1 too
    [pass1] = [r for r in card.data.eval_results if r.metric_type == "pass@1"]
    assert pass1.metric_value == round(exec_report["models"]["adapter"]["pass@1"], 4)


def test_adapter_reloads_identically_in_codelora_and_plain_peft(e2e_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from codelora.config_parse import load_config_file, parse_config
    from codelora.data.pipeline import prepare_data
    from codelora.data.prompts import PromptFormat
    from codelora.models.lora import load_adapter
    from codelora.models.loss import validation_loss
    from codelora.models.sources import codelora_home, load_base

    run, _ = e2e_run
    cfg = parse_config(load_config_file(run / CONFIG))
    base, tok, _ = load_base(cfg.model, "cpu")
    fmt = PromptFormat(tok)
    ids = torch.tensor([fmt.prompt_ids("Write a Python function that reverses a string.")])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        ours = load_adapter(base, run).eval()
        ours_logits = ours(input_ids=ids).logits
        plain_base = AutoModelForCausalLM.from_pretrained(codelora_home() / "models" / "smollm2-135m")
        plain = PeftModel.from_pretrained(plain_base, str(run)).eval()
        plain_logits = plain(input_ids=ids).logits
    assert torch.equal(ours_logits, plain_logits)
    assert not torch.allclose(ours_logits, base_logits)  # the adapter really changes the model

    # The reloaded adapter is the trained one: it reproduces the test loss that `run` measured
    # in the training process, before anything was saved.
    report = json.loads((run / EVAL_REPORT).read_text())
    cfg.data.source, cfg.data.fallback = str(SHARED_HEAD), None  # the rows the run read
    test = prepare_data(cfg.data, cfg.seed, fmt).examples_of("test")
    for model in (ours, plain):
        loss = validation_loss(model, test, cfg.eval.batch_size, tok.pad_token_id, "cpu")
        assert loss == pytest.approx(report["models"]["adapter"]["eval_loss"], abs=1e-5)


def test_ask_answers_with_the_adapter(e2e_run):
    run, _ = e2e_run
    r = run_cli("ask", "Write a Python function that returns the square of x.", "--adapter", run,
                "--max-new-tokens", "40")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
    assert "Traceback" not in r.stderr


def test_execution_eval_of_base_and_adapter(e2e_run, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in [
        {"task_id": "sq", "instruction": "Write a Python function square(x) that returns x squared.",
         "entry_point": "square", "test": "def check(f):\n    assert f(3) == 9\n    assert f(-2) == 4\n"},
        {"task_id": "rev", "instruction": "Write a Python function rev(s) that returns the string s reversed.",
         "entry_point": "rev", "test": "def check(f):\n    assert f('abc') == 'cba'\n"},
    ]))
    run, _ = e2e_run
    r = run_cli("eval", "--tasks", tasks, "--adapter", run, "--out", tmp_path / "out", "--max-new-tokens", "64",
                "--allow-code-execution")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out" / EXEC_REPORT).read_text())
    assert set(report["models"]) == {"base", run.name}
    for m in report["models"].values():
        assert m["tasks"] == 2 and m["samples"] == 2 and 0.0 <= m["pass@1"] <= 1.0
        assert sum(m["status"].values()) == 2
    answers = json.loads((tmp_path / "out" / EXEC_ANSWERS).read_text())
    assert answers["base"]["sq"][0] and answers[run.name]["sq"][0]
