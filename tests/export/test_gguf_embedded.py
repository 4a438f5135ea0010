"""The real embedded SmolLM2 with a trained adapter: exported to f16, q8_0 and q4_k_m, each loaded
by llama.cpp, f16 passing the parity gate; then answered and evaluated through llama.cpp."""

import json

import pytest

from cli_helpers import run_cli
from codelora.io.rundir import EXEC_ANSWERS, EXEC_REPORT, EXPORT_REPORT
from gguf_helpers import require_llama_cpp

pytestmark = pytest.mark.slow
TASKS = "configs/tasks/python_basics.jsonl"


@pytest.fixture(scope="module")
def exported(embedded_adapter, tmp_path_factory):
    require_llama_cpp()
    out = tmp_path_factory.mktemp("gguf") / "export"
    r = run_cli("export", embedded_adapter, "--out", out, "--quant", "f16,q8_0,q4_k_m")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_every_quantization_loads_and_f16_matches_pytorch(exported):
    report = json.loads((exported / EXPORT_REPORT).read_text())
    files = report["files"]
    assert list(files) == ["model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"]
    f16, q8, q4 = (files[n]["parity"] for n in files)
    assert f16["max_abs_diff"] <= 0.5 and f16["max_kl"] <= 1e-3 and f16["top1_agreement"] >= 0.99
    for p in (q8, q4):  # quantization costs something, measurably, and more for 4 bits
        assert p["finite"] and p["top1_agreement"] >= 0.8
    assert f16["mean_kl"] < q8["mean_kl"] < q4["mean_kl"]
    sizes = [files[n]["bytes"] for n in files]
    assert sizes == sorted(sizes, reverse=True) and sizes[2] < 0.5 * sizes[0]
    assert report["base_model"]["name"] == "smollm2-135m"


def test_modelfile_template_matches_smollm2_prompt(exported):
    from test_modelfile import render_go

    from codelora.data.prompts import PromptFormat
    from codelora.decoding.gguf_model import gguf_tokenizer

    text = (exported / "Modelfile").read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    fmt = PromptFormat(gguf_tokenizer(exported / "model-q4_k_m.gguf"))
    assert "You are a helpful AI assistant named SmolLM" in fmt.prompt_text("q")  # SmolLM2's default system
    assert render_go(template, prompt="Sort a list") == fmt.prompt_text("Sort a list")


def test_ask_and_eval_through_llama_cpp(exported, embedded_adapter, tmp_path):
    r = run_cli("ask", "Write a Python function that reverses a string.", "--gguf", exported / "model-q4_k_m.gguf",
                "--max-new-tokens", "48")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    out = tmp_path / "tasks"
    r = run_cli("eval", "--tasks", TASKS, "--limit", "2", "--max-new-tokens", "64", "--gguf",
                exported / "model-f16.gguf", "--gguf", exported / "model-q4_k_m.gguf", "--allow-code-execution",
                "--out", out, "--model", "smollm2-135m")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / EXEC_REPORT).read_text())
    assert list(report["models"]) == ["base", "model-f16", "model-q4_k_m"]
    assert all(m["tasks"] == 2 for m in report["models"].values())
    answers = json.loads((out / EXEC_ANSWERS).read_text())
    assert all(a[0].strip() for a in answers["model-q4_k_m"].values())
