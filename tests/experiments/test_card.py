"""The run directory's README.md: a model card from the run that huggingface_hub parses and
validates, whose base model someone else can load, and whose plain-peft snippet runs as written."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli
from codelora.io.rundir import ADAPTER_CONFIG, EVAL_REPORT, MANIFEST, MODEL_CARD
import warm

ROOT = Path(__file__).parents[2]


def load_card(run_dir: Path):
    """The card as the Hub library reads it, with metadata errors raised (not ignored)."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    card = ModelCard.load(run_dir / MODEL_CARD, ignore_metadata_errors=False)
    if "/" in card.data.base_model:
        validate_repo_id(card.data.base_model)  # a Hub id, as the Hub checks it
    for dataset in card.data.datasets or []:
        validate_repo_id(dataset)
    return card


def python_block(card) -> str:
    [code] = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    return code


def tiny_run(tmp_path, model_dir, data_file, *extra) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text("eval:\n  limit: 2\ngenerate:\n  max_new_tokens: 8\n")
    out = tmp_path / "my-adapter"
    r = run_cli("run", config, "--model", model_dir, "--data", data_file, "--out", out, "--max-steps", "3", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_the_card_is_written_from_the_run_and_parses(tiny_model_dir, data_file, tmp_path):
    out = tiny_run(tmp_path, tiny_model_dir, data_file, "--set", "model.hub_id=someone/tiny-llama")
    card = load_card(out)
    report = json.loads((out / EVAL_REPORT).read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    d = card.data
    assert d.base_model == "someone/tiny-llama" and d.library_name == "peft" and d.base_model_relation == "adapter"
    assert "lora" in d.tags and d.pipeline_tag == "text-generation"
    results = {r.metric_type: r.metric_value for r in d.eval_results}
    assert results["loss"] == round(report["models"]["adapter"]["eval_loss"], 4)
    assert results["bleu"] == round(report["models"]["adapter"]["bleu"], 4)
    assert {r.dataset_split for r in d.eval_results} == {"test"}
    text = card.text
    for needle in ("## Base model", "## Data", "## Method", "## Training", "## Evaluation", "## How to use",
                   "## Intended use and limits", manifest["data"]["sha256"], "r 16, alpha 32",
                   f"{manifest['train']['steps']} optimizer steps", "More Information Needed"):
        assert (needle in text) == (needle != "More Information Needed"), needle
    assert f"| eval loss (answer tokens) | {report['models']['base']['eval_loss']:.4f} |" in text
    adapter_config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert adapter_config["base_model_name_or_path"] == "someone/tiny-llama"

    # `codelora eval RUN_DIR` writes the card again with its new report
    r = run_cli("eval", out, "--limit", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "answers (at most 8 new tokens) for 1 rows" in load_card(out).text


def test_a_local_base_is_named_by_its_folder_never_by_a_path(tiny_model_dir, data_file, tmp_path):
    out = tiny_run(tmp_path, tiny_model_dir, data_file)
    named = json.loads((out / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    assert named == tiny_model_dir.name and os.sep not in named
    card = load_card(out)
    assert card.data.base_model == tiny_model_dir.name
    assert str(tiny_model_dir) not in (out / MODEL_CARD).read_text()
    assert "set model.hub_id" in card.text


@pytest.mark.slow
def test_the_demo_card_validates_and_its_snippet_reproduces_the_eval_loss(embedded_run, shared_head):
    """configs/demo.yaml on the real embedded model (3 steps), run in a terminal: a bar with an ETA
    during evaluation; the card's metadata validates and its plain-peft snippet, run as written from
    the run directory, gives the adapter's test loss of eval_report.json."""
    out, stderr = embedded_run.path, embedded_run.stderr
    assert embedded_run.returncode == 0, stderr[-3000:]
    assert re.search(r"adapter: generating: +\d+%\|.*\| \d+/4 \[\d\d:\d\d<\d\d:\d\d", stderr), stderr[-3000:]

    card = load_card(out)
    d = card.data
    assert d.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and d.datasets == ["flytech/python-codes-25k"]
    assert d.license == "apache-2.0" and d.library_name == "peft"
    assert "dequantized to float32" in card.text and "read from a local copy" in card.text
    adapter_config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    check = f"""
import json
from codelora.config_parse import load_config_file, parse_config
from codelora.data.pipeline import prepare_data
from codelora.data.prompts import format_for
from codelora.models.loss import validation_loss

cfg = parse_config(load_config_file("config.yaml"))
cfg.data.source, cfg.data.fallback = {str(shared_head)!r}, None  # the rows the run read
fmt = format_for("causal-lm", tokenizer)
data = prepare_data(cfg.data, cfg.seed, fmt)
pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
loss = validation_loss(model, data.examples_of("test"), 8, pad, "cpu")
print(json.dumps({{"sha256": data.curated.sha256, "loss": loss}}))
"""
    r = warm.run([sys.executable, "-c", python_block(card) + check], cwd=out, capture_output=True, text=True,
                 timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    *answer, last = r.stdout.strip().splitlines()
    assert "".join(answer).strip(), "the snippet prints an answer"
    got = json.loads(last)
    manifest = json.loads((out / MANIFEST).read_text())
    report = json.loads((out / EVAL_REPORT).read_text())
    assert got["sha256"] == manifest["data"]["sha256"]
    assert abs(got["loss"] - report["models"]["adapter"]["eval_loss"]) < 1e-4, (got, report["models"]["adapter"])


def test_a_hub_id_that_is_a_path_is_refused(tmp_path):
    from cli_helpers import call_cli

    r = call_cli("train", "--set", "model.hub_id=/home/me/models/tiny", "--out", tmp_path / "run")
    assert r.returncode == 1 and not (tmp_path / "run").exists()
    assert r.stderr.strip() == ("codelora: error: model.hub_id must be a Hub id such as owner/name; "
                                "got '/home/me/models/tiny'")
