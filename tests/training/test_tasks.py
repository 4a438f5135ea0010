"""Each model.task and train.method end to end, through the real CLI, on tiny random models:
trainable-parameter counts equal the closed form; `codelora eval RUN_DIR` reproduces the report."""

import json

import pytest

from cli_helpers import call_cli, run_cli
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EVAL_REPORT, EVAL_SAMPLES, LABELS, MANIFEST
from conftest import REPO, make_labeled_rows, write_jsonl


def run_and_eval(tmp_path, model_dir, data, *sets, steps=4):
    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("seed: 3\n")
    args = ["run", tmp_path / "c.yaml", "--model", model_dir, "--data", data, "--out", out, "--max-steps", steps,
            "--lr", "5e-3", "--set", "eval.max_new_tokens=8"]
    for s in sets:
        args += ["--set", s]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / EVAL_REPORT).read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    again = run_cli("eval", out, "--max-new-tokens", "8")  # a fresh process rebuilds the split and the models
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads((out / EVAL_REPORT).read_text())
    for name in report["models"]:
        assert redo["models"][name]["eval_loss"] == pytest.approx(report["models"][name]["eval_loss"], abs=1e-5)
    return out, report, manifest


def test_seq2seq_lora_on_t5(tmp_path, tiny_t5_dir, data_file):
    out, report, manifest = run_and_eval(tmp_path, tiny_t5_dir, data_file, "model.task=seq2seq",
                                         "lora.target_modules=[q,k,v,o]", "lora.r=4")
    assert manifest["task"] == "seq2seq" and manifest["method"] == "lora"
    # 2 encoder blocks x 4 + 2 decoder blocks x 8 attention matrices, each 32 x 32, r=4
    assert manifest["parameters"]["trainable"] == 24 * 4 * (32 + 32)
    assert json.loads((out / ADAPTER_CONFIG).read_text())["task_type"] == "SEQ_2_SEQ_LM"
    assert report["task"] == "seq2seq" and {"bleu", "rougeL_f1"} <= set(report["models"]["adapter"])
    assert report["models"]["adapter"]["eval_loss"] < report["models"]["base"]["eval_loss"]
    samples = [json.loads(x) for x in (out / EVAL_SAMPLES).read_text().splitlines()]
    assert len(samples) == report["rows_generated"] and all(isinstance(s["adapter"], str) for s in samples)


def test_classification_lora_on_a_labeled_file(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "labeled.jsonl", make_labeled_rows(60))
    out, report, manifest = run_and_eval(tmp_path, tiny_bert_dir, data, "model.task=classification",
                                         "lora.target_modules=[query,value]", "lora.r=4", steps=6)
    assert json.loads((out / LABELS).read_text()) == ["add", "mul", "sub"]
    # 2 blocks x (query, value), 32 x 32 each, r=4; plus the new 3-way classifier (weight + bias)
    assert manifest["parameters"]["trainable"] == 2 * 2 * 4 * (32 + 32) + 32 * 3 + 3
    samples = [json.loads(x) for x in (out / EVAL_SAMPLES).read_text().splitlines()]
    assert len(samples) == report["rows_for_loss"] == manifest["data"]["split_sizes"]["test"]
    for name in ("base", "adapter"):  # the reported accuracy is the share of samples predicted right
        right = sum(s[name] == s["label"] for s in samples)
        assert report["models"][name]["accuracy"] == pytest.approx(right / len(samples))
        assert 0.0 <= report["models"][name]["macro_f1"] <= 1.0
    asked = call_cli("ask", "Which category?", "--adapter", out)  # ask is for causal LMs: one clear line
    assert asked.returncode == 1 and "model.task=classification" in asked.stderr and "Traceback" not in asked.stderr


def test_classification_data_of_neither_shape_is_one_line(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}] * 10)
    r = call_cli("train", "--model", tiny_bert_dir, "--data", data, "--out", tmp_path / "run",
                 "--set", "model.task=classification")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "text" in lines[0] and "label" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("method", ["full", "top-1", "none"])
def test_other_methods_on_a_decoder(tmp_path, tiny_model_dir, data_file, method):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    block = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64  # see tests/models/test_methods.py
    out, report, manifest = run_and_eval(tmp_path, tiny_model_dir, data_file, f"train.method={method}")
    expected = {"full": 2 * block + vocab * 64 + 64, "top-1": block + vocab * 64, "none": 0}[method]
    assert manifest["method"] == method and manifest["parameters"]["trainable"] == expected
    assert report["method"] == method
    if method == "none":
        assert list(report["models"]) == ["base"] and manifest["train"]["steps"] == 0
        assert not (out / "model.safetensors").exists() and not (out / ADAPTER_WEIGHTS).exists()
    else:
        # a whole model, loadable with --model; it learned something in 4 steps at lr 5e-3
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        assert report["models"]["adapter"]["eval_loss"] < report["models"]["base"]["eval_loss"]
        asked = run_cli("ask", "Write add", "--adapter", out)
        assert asked.returncode == 1 and f"use --model {out}" in asked.stderr


@pytest.mark.slow
def test_embedded_encoder_learns_the_builtin_category_task(tmp_path, shared_head):
    """all-MiniLM-L6-v2 from its wheel, LoRA r=16 on query/value, the instruction-category labels."""
    out = tmp_path / "classify"
    r = run_cli("run", "configs/classify.yaml", "--data", shared_head, "--limit", 160, "--out", out,
                "--max-steps", 6, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    labels = json.loads((out / LABELS).read_text())
    assert "other" in labels and labels == sorted(labels)
    manifest = json.loads((out / MANIFEST).read_text())
    # 6 blocks x (query, value), each 384 x 384, r=16; plus the classifier 384 x labels + bias
    assert manifest["parameters"]["trainable"] == 6 * 2 * 16 * (384 + 384) + 384 * len(labels) + len(labels)
    assert json.loads((out / ADAPTER_CONFIG).read_text())["task_type"] == "SEQ_CLS"
    report = json.loads((out / EVAL_REPORT).read_text())
    samples = [json.loads(x) for x in (out / EVAL_SAMPLES).read_text().splitlines()]
    right = sum(s["adapter"] == s["label"] for s in samples)
    assert report["models"]["adapter"]["accuracy"] == pytest.approx(right / len(samples))


@pytest.mark.slow
def test_embedded_decoder_top_2_is_a_loadable_model(tmp_path, data_file):
    out = tmp_path / "top2"
    r = run_cli("train", "--data", data_file, "--out", out, "--max-steps", 1, "--method", "top-2")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    # SmolLM2 block: q, o 576x576; k, v 576x192; gate, up, down 576x1536; two norms of 576
    block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert manifest["parameters"]["trainable"] == 2 * block + 49152 * 576  # + the tied embedding / head
    asked = run_cli("ask", "Write a function that adds two numbers", "--model", out, "--max-new-tokens", 4)
    assert asked.returncode == 0 and asked.stdout.strip(), asked.stderr[-2000:]
