import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelora.config import LoraSettings
from codelora.config_parse import parse_config
from codelora.data.prompts import PromptFormat
from codelora.evaluation.compare import candidates, compare_models
from codelora.io.rundir import EVAL_CHART, EVAL_REPORT, EVAL_REPORT_MD, EVAL_SAMPLES
from codelora.models.lora import apply_lora


def _tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), PromptFormat(tok)


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
    assert json.loads((tmp_path / EVAL_REPORT).read_text()) == report
    md = (tmp_path / EVAL_REPORT_MD).read_text()
    assert "| eval loss (answer tokens) |" in md and "| BLEU (sacrebleu, 0-100) |" in md
    assert (tmp_path / EVAL_CHART).read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(x) for x in (tmp_path / EVAL_SAMPLES).read_text().splitlines()]
    assert len(samples) == 4 and samples[0]["reference"] == test_rows[0]["output"]
