"""`codelora export`: GGUF files that llama.cpp loads and that behave like the PyTorch model, or a
one-line refusal with nothing left behind."""

import json

import pytest
import torch

from adapters_helpers import inject_nan, save_plain_peft
from cli_helpers import call_cli, run_cli
from codelora.io.rundir import ADAPTER_CONFIG, EXPORT_REPORT
from gguf_helpers import require_llama_cpp, save_tiny_smollm
from pty_helpers import run_cli_in_pty, stages_shown
import warm


@pytest.fixture(scope="module", autouse=True)
def llama_cpp_installed():
    require_llama_cpp()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_smollm(tmp_path_factory.mktemp("tiny_smollm"))


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    return save_plain_peft(tiny, tmp_path_factory.mktemp("peft") / "adapter", targets=("q_proj", "v_proj", "o_proj"))


EXPORT_STAGES = ["checking the architecture", "loading the base model", "loading the adapter", "merging",
                 "parity check", "saving for the converter", "converting to GGUF f16", "quantizing to q8_0",
                 "PyTorch reference", "llama.cpp check of model-f16.gguf", "llama.cpp check of model-q8_0.gguf"]


def _no_output(out):
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


def _one_line_error(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("codelora: error:"), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_export_gguf_files_match_the_merged_model(adapter, tmp_path):
    from gguf import GGUFReader

    from codelora.decoding.gguf_model import GgufModel

    out = tmp_path / "gguf"
    drawn = run_cli_in_pty("export", adapter, "--out", out, "--quant", "f16,q8_0")  # on a terminal: a stage bar
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export_report.json", "model-f16.gguf",
                                                     "model-q8_0.gguf"]
    assert stages_shown(drawn, "export") == EXPORT_STAGES, drawn
    report = json.loads((out / EXPORT_REPORT).read_text())
    f16 = report["files"]["model-f16.gguf"]["parity"]
    assert f16["finite"] and f16["max_abs_diff"] <= 0.5 and f16["max_kl"] <= 1e-3 and f16["top1_agreement"] > 0.9
    assert f16["positions"] > 100 and len(f16["greedy"]) == 4
    assert report["merge_parity"]["max_abs_diff"] <= 1e-3
    q8 = report["files"]["model-q8_0.gguf"]["parity"]
    assert q8["finite"] and 0 < q8["mean_kl"] and q8["max_abs_diff"] > f16["max_abs_diff"]  # quantized: rounder
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text().splitlines()
    assert GGUFReader(out / "model-q8_0.gguf").fields["general.architecture"].contents() == "llama"

    # the merged weights, not the base: llama.cpp's logits follow the adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from codelora.data.prompts import PromptFormat
    from codelora.decoding.gguf_model import gguf_tokenizer

    tok = gguf_tokenizer(out / "model-f16.gguf")
    ids = PromptFormat(tok).prompt_ids("Reverse a string in Python.")
    gguf = GgufModel(out / "model-f16.gguf", n_ctx=256, all_logits=True)
    try:
        mine = gguf.logits(ids)
    finally:
        gguf.close()
    base_dir = json.loads((adapter / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.inference_mode():
        plain = base(input_ids=torch.tensor([ids])).logits[0]
        tuned = PeftModel.from_pretrained(base, adapter).eval()(input_ids=torch.tensor([ids])).logits[0]
    assert (mine - tuned).abs().max() < 0.5 < (plain - tuned).abs().max()

    # a generation budget past the file's own context length is refused before llama.cpp reserves it
    from codelora.decoding.gguf_model import trained_context

    limit = trained_context(out / "model-q8_0.gguf")
    with open(f"{base_dir}/config.json") as f:
        assert limit == json.load(f)["max_position_embeddings"]
    r = call_cli("ask", "hi", "--gguf", out / "model-q8_0.gguf", "--max-new-tokens", str(limit))
    _one_line_error(r, f"exceed the context length {limit} of model-q8_0.gguf", "lower --max-new-tokens")


def test_export_gguf_lora_applies_on_the_base(adapter, tmp_path):
    out = tmp_path / "lora"
    drawn = run_cli_in_pty("export", adapter, "--out", out, "--format", "gguf-lora")
    assert stages_shown(drawn, "export") == [
        "checking the architecture", "loading the base model", "saving the base for the converter",
        "converting the base to GGUF f16", "converting the adapter to GGUF", "PyTorch reference",
        "llama.cpp check of adapter-f32.gguf"], drawn
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter-f32.gguf", "base-f16.gguf",
                                                     "export_report.json"]
    report = json.loads((out / EXPORT_REPORT).read_text())
    p = report["files"]["adapter-f32.gguf"]["parity"]
    assert p["max_abs_diff"] <= 0.5 and p["max_kl"] <= 1e-3
    modelfile = (out / "Modelfile").read_text().splitlines()
    assert "FROM ./base-f16.gguf" in modelfile and "ADAPTER ./adapter-f32.gguf" in modelfile


def test_rslora_scale_is_carried_into_the_gguf_lora(tiny, tmp_path):
    """llama.cpp scales by alpha / r; an rsLoRA adapter (alpha / sqrt(r)) must still match PyTorch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=16, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if "lora_B" in n:
                prm.mul_(20)
    model.save_pretrained(tmp_path / "rs")
    r = run_cli("export", tmp_path / "rs", "--out", tmp_path / "out", "--format", "gguf-lora")
    assert r.returncode == 0, r.stderr[-3000:]
    p = json.loads((tmp_path / "out" / EXPORT_REPORT).read_text())["files"]["adapter-f32.gguf"]["parity"]
    assert p["max_abs_diff"] <= 0.5


def test_a_nan_adapter_is_refused_with_nothing_written(adapter, tmp_path):
    bad = inject_nan(adapter, tmp_path / "bad")
    for fmt in ("gguf", "gguf-lora"):
        out = tmp_path / f"out-{fmt}"
        r = call_cli("export", bad, "--out", out, "--format", fmt)
        _one_line_error(r, "NaN")
        assert _no_output(out)


def test_an_architecture_llama_cpp_lacks_is_refused_with_nothing_written(tmp_path):
    opt = save_tiny_smollm(tmp_path / "opt", arch="opt")
    adapter = save_plain_peft(opt, tmp_path / "opt-adapter")
    out = tmp_path / "out"
    r = call_cli("export", adapter, "--out", out)
    _one_line_error(r, "OPTForCausalLM", "not support")
    assert _no_output(out)


def test_the_converters_model_list_is_kept_per_version_of_the_scripts(tmp_path, monkeypatch):
    import os
    import shutil

    from codelora.export.converters import (check_architecture, converter_dir, listing_cache,
                                            supported_architectures)

    monkeypatch.setenv("CODELORA_HOME", str(tmp_path / "home"))
    cache = listing_cache()
    assert not cache.exists()
    listed = supported_architectures()  # asks the converter (~3 s) and keeps its answer
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM"} <= listed and "OPTForCausalLM" not in listed
    assert set(cache.read_text().split()) == listed
    cache.write_text("LlamaForCausalLM\nKeptForCausalLM\n")
    assert supported_architectures() == {"LlamaForCausalLM", "KeptForCausalLM"}  # read back, not asked again
    cache.write_text("")  # a damaged list refuses nothing llama.cpp supports: the converter is asked first
    check_architecture("Qwen2ForCausalLM", "a model")
    assert set(cache.read_text().split()) == listed
    copy = shutil.copytree(converter_dir(), tmp_path / "converters")
    monkeypatch.setenv("CODELORA_LLAMA_CPP", str(copy))
    assert listing_cache() == cache  # the same scripts: the same list
    script = copy / "convert_hf_to_gguf.py"
    os.utime(script, ns=(script.stat().st_atime_ns, script.stat().st_mtime_ns + 1))
    assert listing_cache() != cache  # a changed script is asked again


def test_what_gguf_lora_cannot_hold_is_refused(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "dora")
    r = call_cli("export", tmp_path / "dora", "--out", tmp_path / "out", "--format", "gguf-lora")
    _one_line_error(r, "DoRA", "--format gguf")
    assert _no_output(tmp_path / "out")


def test_missing_converters_and_bad_input_are_one_line_errors(adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("CODELORA_LLAMA_CPP", str(tmp_path / "nowhere"))
    r = call_cli("export", adapter, "--out", tmp_path / "out")
    _one_line_error(r, "converter scripts", "make install-gguf")
    monkeypatch.delenv("CODELORA_LLAMA_CPP")
    _one_line_error(call_cli("export", tmp_path / "missing", "--out", tmp_path / "out"), "not found")
    r = call_cli("export", adapter, "--out", tmp_path / "out", "--quant", "q2_k")
    assert r.returncode == 1 and "--quant" in r.stderr and "q4_k_m" in r.stderr
    (tmp_path / "not.gguf").write_text("hello")
    _one_line_error(call_cli("ask", "hi", "--gguf", tmp_path / "not.gguf"), "not a GGUF file")
    assert _no_output(tmp_path / "out")


def test_without_llama_cpp_python_export_says_what_to_install(adapter, tmp_path):
    import sys

    code = ("import sys; sys.modules['llama_cpp'] = None; from codelora.cli import main; "
            f"sys.exit(main(['export', {str(adapter)!r}, '--out', {str(tmp_path / 'out')!r}]))")
    r = warm.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    _one_line_error(r, "llama-cpp-python", "make install-gguf")
    assert _no_output(tmp_path / "out")


def test_a_full_fine_tune_exports_as_a_whole_model(tiny, tmp_path):
    """Trained sharded (train.distributed fsdp, 2 processes): the run exports like any other."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import make_rows, write_jsonl

    data = write_jsonl(tmp_path / "rows.jsonl", make_rows(24))
    run = tmp_path / "full"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "codelora", "train", "--model", tiny,
                        "--data", data, "--out", run, "--max-steps", "1", "--lr", "5e-3", "--method", "full",
                        "--set", "train.distributed=fsdp"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "model checked whole" in r.stderr, r.stderr[-3000:]
    out = tmp_path / "gguf"
    r = run_cli("export", run, "--out", out, "--quant", "f16")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / EXPORT_REPORT).read_text())
    assert report["merge_parity"] is None and report["files"]["model-f16.gguf"]["parity"]["max_kl"] <= 1e-3
    r = call_cli("export", run, "--out", tmp_path / "lora", "--format", "gguf-lora")
    _one_line_error(r, "whole model", "--format gguf")

