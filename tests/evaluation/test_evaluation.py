import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelora.config import GenerateConfig, LoraSettings, parse_config
from codelora.data.prompts import PromptFormat
from codelora.evaluation.compare import candidates, compare_models
from codelora.models.generate import generate_answers
from codelora.evaluation.metrics import corpus_bleu, rouge_scores
from codelora.models.lora import apply_lora
from conftest import build_tiny_model, build_tokenizer


def test_metrics_separate_right_from_wrong():
    refs = ["def add(a, b):\n    return a + b", "print('hello world')"]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert rouge_scores(refs, refs)["rougeL_f1"] == pytest.approx(1.0)
    wrong = ["import os", "while True: pass"]
    assert corpus_bleu(wrong, refs) < 5 and rouge_scores(wrong, refs)["rougeL_f1"] < 0.2


def _tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), PromptFormat(tok)


def test_batched_greedy_equals_one_at_a_time():
    tok = build_tokenizer()
    # wide random init: a default-init tiny model repeats one token, which would hide padding bugs
    model, fmt = build_tiny_model(tok, init_range=0.3).eval(), PromptFormat(tok)
    questions = ["Write add2.", "Write a Python function mul3(x) that applies * 3 to x.", "q"]
    gen = GenerateConfig(max_new_tokens=12)
    batched = generate_answers(model, fmt, questions, gen, batch_size=3, device="cpu")
    single = [generate_answers(model, fmt, [q], gen, 1, "cpu")[0] for q in questions]
    assert batched == single
    assert len(set(batched)) == 3 and all(len(a) > 5 for a in batched)


def test_report_compares_base_and_adapter(tiny_model_dir, rows, tmp_path):
    model, fmt = _tiny(tiny_model_dir)
    peft_model = apply_lora(model, LoraSettings(r=2))
    with torch.no_grad():  # make the adapter differ from the base
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    test_rows = rows[:4]
    examples = [fmt.encode(r) for r in test_rows]
    cfg = parse_config({"generate": {"max_new_tokens": 8}, "eval": {"batch_size": 2}})
    report = compare_models(candidates(peft_model, "lora", None), fmt, test_rows, examples, cfg,
                            fmt.tok.pad_token_id, "cpu", tmp_path)
    base, adapter = report["models"]["base"], report["models"]["adapter"]
    assert base["eval_loss"] != adapter["eval_loss"]
    for m in (base, adapter):
        assert set(m) >= {"eval_loss", "perplexity", "bleu", "rougeL_f1"}
    assert json.loads((tmp_path / "eval_report.json").read_text()) == report
    md = (tmp_path / "eval_report.md").read_text()
    assert "| eval loss (answer tokens) |" in md and "| BLEU (sacrebleu, 0-100) |" in md
    assert (tmp_path / "eval_report.png").read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(x) for x in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and samples[0]["reference"] == test_rows[0]["output"]


def test_rouge_exact_match_and_syntax():
    from codelora.evaluation.metrics import exact_match, rouge_scores, syntax_valid

    refs = ["```python\nx = 1\n```", "def f():\n    return 2"]
    hyps = ["Here:\n```python\nx = 1\n```", "def f(:\n    return 2"]
    assert exact_match(hyps, refs) == 0.5
    assert syntax_valid(hyps) == 0.5
    s = rouge_scores(refs, refs)
    assert s["rouge1_f1"] == pytest.approx(1.0) and s["rouge2_recall"] == pytest.approx(1.0)
    assert set(s) == {f"{k}_{m}" for k in ("rouge1", "rouge2", "rougeL") for m in ("precision", "recall", "f1")}
