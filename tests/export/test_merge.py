"""`codelora merge`: the merged model equals the adapter model, and the parity gate refuses bad merges."""

import json

import pytest
import torch

from adapters_helpers import inject_nan, save_plain_peft, train_with_codelora
from cli_helpers import call_cli, run_cli
from codelora.io.rundir import MERGE_REPORT

PROMPT = "Write a Python function add2(x) that applies + 2 to x."


def _logits(model, tok):
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    from conftest import make_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("merge")
    data = write_jsonl(tmp / "rows.jsonl", make_rows(40))
    return train_with_codelora(tiny_model_dir, data, tmp / "run", steps=3)


def test_merge_of_a_trained_adapter(trained, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    r = run_cli("merge", trained, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "parity gate passed" in r.stderr
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin")) and not (tmp_path / "merged.partial").exists()
    report = json.loads((out / MERGE_REPORT).read_text())
    assert report["parity"]["finite"] and report["parity"]["max_abs_diff"] <= 1e-3
    assert report["parity"]["positions"] > 100

    # loads as a plain transformers model: same parameter count as the base, same logits as base + adapter
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n_base = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in merged.parameters()) == n_base == report["parameters"]["merged"]
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base_logits = _logits(base, tok)
    adapter_logits = _logits(PeftModel.from_pretrained(base, str(trained)), tok)
    merged_logits = _logits(merged, tok)
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)  # the adapter's change is in the weights

    # and it serves as a base model: codelora ask --model MERGED
    r = run_cli("ask", "hello", "--model", out, "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr[-2000:]

    r = run_cli("merge", trained, "--out", out)  # never replaced silently
    assert r.returncode == 1 and "--overwrite" in r.stderr


def test_parity_gate_refuses_an_adapter_with_a_nan(trained, tmp_path):
    bad = inject_nan(trained, tmp_path / "bad")
    out = tmp_path / "merged"
    r = run_cli("merge", bad, "--out", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("codelora: error: merge refused, nothing written: ") and "NaN/Inf" in lines[-1]
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "merged.partial").exists()


def test_adapter_written_by_plain_peft_merges(tiny_model_dir, tmp_path):
    adapter = save_plain_peft(tiny_model_dir, tmp_path / "peft-adapter")
    r = run_cli("merge", adapter, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "merged" / MERGE_REPORT).read_text())
    assert report["base_model"]["kind"] == "local" and report["adapter_vs_base"]["max_abs_diff"] > 0.01


def test_merge_errors_are_one_line(tmp_path):
    r = call_cli("merge", tmp_path, "--out", tmp_path / "m")
    assert r.returncode == 1 and "adapter_config.json is missing" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_merge_of_an_adapter_trained_on_the_embedded_model(embedded_adapter, tmp_path):
    run = embedded_adapter
    r = run_cli("merge", run, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "merged" / MERGE_REPORT).read_text())
    assert report["parameters"]["merged"] == report["parameters"]["base"] == 134_515_008
    assert report["parity"]["max_abs_diff"] < 1e-3 and report["adapter_vs_base"]["max_abs_diff"] > 0
    bad = inject_nan(run, tmp_path / "bad")
    r = run_cli("merge", bad, "--out", tmp_path / "merged-bad")
    assert r.returncode == 1 and "NaN/Inf" in r.stderr and not (tmp_path / "merged-bad").exists()
