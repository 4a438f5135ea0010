"""`codelora export --format vllm`: an adapter vLLM would load is written with its `vllm serve` command and
its `/v1/load_lora_adapter` body; one vLLM refuses is refused here, naming the rule, with nothing written."""

import json
import os
import shutil
import subprocess

import pytest

from cli_helpers import run_cli
from codelora.config import EMBEDDED_HUB_IDS, EMBEDDED_MODEL, ExportConfig
from codelora.export.converters import ExportError
from codelora.export.vllm_export import LOAD_BODY, SERVE_SCRIPT, export
from codelora.export.vllm_rules import MAX_LORA_RANKS, allowed_max_lora_rank
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_REPORT

VLLM = ExportConfig(format="vllm")


def make_adapter(model_dir, out, **lora):
    """A peft adapter on `model_dir` (nothing trained): LoraConfig's defaults with `lora` on top."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora}
    get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **settings)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ordinary(tiny_model_dir, tmp_path_factory):
    """Every linear layer of the tiny Llama, r=12: vLLM needs --max-lora-rank 16."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("vllm") / "python-qa", r=12, lora_alpha=24,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _nothing_written(out):
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


def _refused(run_dir, out, rule):
    with pytest.raises(ExportError) as e:
        export(run_dir, out, VLLM)
    message = str(e.value)
    assert f"rule '{rule}'" in message and "\n" not in message, message
    assert _nothing_written(out)
    return message


def test_max_lora_rank_is_the_smallest_allowed_value():
    assert MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert [allowed_max_lora_rank(r) for r in (1, 2, 8, 12, 16, 17, 300, 512, 513, 1024)] == \
        [1, 8, 8, 16, 16, 32, 320, 512, None, None]


def test_an_ordinary_adapter_is_written_with_its_serve_command(ordinary, tiny_model_dir, tmp_path):
    out = tmp_path / "vllm"
    report = export(ordinary, out, VLLM)
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, SERVE_SCRIPT, LOAD_BODY,
                                                            EXPORT_REPORT])
    for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        assert (out / f).read_bytes() == (ordinary / f).read_bytes()

    body = json.loads((out / LOAD_BODY).read_text())
    assert body == {"lora_name": "python-qa", "lora_path": str(out.resolve())}
    assert (out / ADAPTER_CONFIG).is_file() and os.path.isabs(body["lora_path"])

    # the script, run with a stand-in `vllm` that prints its arguments: the command vLLM would get
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vllm").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "vllm").chmod(0o755)
    moved = shutil.copytree(out, tmp_path / "moved dir")  # the script serves the folder it is in
    r = subprocess.run([str(moved / SERVE_SCRIPT), "--port", "8001"], capture_output=True, text=True, timeout=30,
                       check=False, env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["serve", tiny_model_dir.name, "--enable-lora", "--max-lora-rank", "16",
                                     "--lora-modules", f"python-qa={moved}", "--port", "8001"]

    saved = json.loads((out / EXPORT_REPORT).read_text())
    assert saved == report
    assert saved["format"] == "vllm" and saved["architecture"] == "LlamaForCausalLM"
    assert saved["rank"] == 12 and saved["max_lora_rank"] == 16
    assert saved["serve_command"] == (f"vllm serve {tiny_model_dir.name} --enable-lora --max-lora-rank 16 "
                                      f"--lora-modules python-qa={out.resolve()}")
    verdicts = {v["rule"]: v["verdict"] for v in saved["rules"]}
    assert set(verdicts) >= {"peft_type", "dora", "modules_to_save", "bias", "rank", "embeddings", "target_modules",
                             "lora_weights", "finite"}
    assert set(verdicts.values()) == {"pass"}, saved["rules"]
    assert all(v["source"] for v in saved["rules"])


@pytest.mark.parametrize("lora, rule, needle", [
    ({"use_dora": True}, "dora", "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save", "lm_head"),
    ({"bias": "all"}, "bias", "bias='all'"),
    ({"bias": "lora_only"}, "bias", "bias='lora_only'"),
    ({"r": 1024, "lora_alpha": 16}, "rank", "allowed: 1, 8, 16, 32, 64, 128, 256, 320, 512"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embeddings", "embed_tokens"),
    ({"trainable_token_indices": [1, 2]}, "embeddings", "trainable_token_indices"),
    ({"init_lora_weights": "olora"}, "peft_features", "olora"),
    ({"rank_pattern": {"q_proj": 8}}, "per_module_patterns", "rank_pattern"),
])
def test_what_vllm_refuses_is_refused(tiny_model_dir, tmp_path, lora, rule, needle):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", **lora)
    assert needle in _refused(adapter, tmp_path / "out", rule)


def test_extra_vocabulary_is_refused(ordinary, tmp_path):
    adapter = shutil.copytree(ordinary, tmp_path / "adapter")
    (adapter / "new_embeddings.safetensors").write_bytes(b"")
    assert "new_embeddings.safetensors" in _refused(adapter, tmp_path / "out", "embeddings")


def test_a_module_vllm_does_not_adapt_is_refused(ordinary, tmp_path):
    """A fused qkv_proj LoRA (vLLM fuses q/k/v itself and takes only the parts) on a Llama."""
    from safetensors.torch import load_file, save_file

    adapter = shutil.copytree(ordinary, tmp_path / "adapter")
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    save_file({k.replace("q_proj", "qkv_proj"): v for k, v in weights.items()}, str(adapter / ADAPTER_WEIGHTS))
    message = _refused(adapter, tmp_path / "out", "target_modules")
    assert "qkv_proj in LlamaForCausalLM" in message and "q_proj" in message


def test_an_architecture_not_in_the_table_is_not_checked(ordinary, tiny_model_dir, tmp_path):
    base = tmp_path / "other-base"
    base.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "architectures": ["SomeNewForCausalLM"]}))
    adapter = shutil.copytree(ordinary, tmp_path / "adapter")
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    report = export(adapter, tmp_path / "out", VLLM)
    target = next(v for v in report["rules"] if v["rule"] == "target_modules")
    assert target["verdict"] == "not checked" and "SomeNewForCausalLM" in target["detail"]


def test_runs_without_an_adapter_are_refused(tiny_model_dir, tmp_path):
    full = shutil.copytree(tiny_model_dir, tmp_path / "full-run")  # a full / top-K run: a whole model
    with pytest.raises(ExportError, match="whole model .*vllm serve "):
        export(full, tmp_path / "out", VLLM)
    (tmp_path / "none-run").mkdir()
    with pytest.raises(ExportError, match="holds no LoRA adapter"):
        export(tmp_path / "none-run", tmp_path / "out", VLLM)
    assert _nothing_written(tmp_path / "out")


def test_the_cli_refuses_in_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "dora", use_dora=True)
    out = tmp_path / "out"
    r = run_cli("export", adapter, "--format", "vllm", "--out", out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("codelora: error:"), r.stderr[-2000:]
    assert "rule 'dora'" in lines[0] and "vllm/lora/peft_helper.py" in lines[0]
    assert _nothing_written(out)


def test_the_demo_adapter_is_accepted(embedded_adapter, tmp_path):
    """The session's real `codelora run configs/demo.yaml` on SmolLM2 (LlamaForCausalLM), served on its Hub original."""
    adapter = embedded_adapter
    hub_id = EMBEDDED_HUB_IDS[EMBEDDED_MODEL]
    out = tmp_path / "out"
    report = export(adapter, out, VLLM)
    assert report["base_model"] == hub_id and report["architecture"] == "LlamaForCausalLM"
    assert report["max_lora_rank"] == 16 and {v["verdict"] for v in report["rules"]} == {"pass"}
    assert report["serve_command"].startswith(f"vllm serve {hub_id} --enable-lora --max-lora-rank 16 ")
    script = (out / SERVE_SCRIPT).read_text()
    assert f"exec vllm serve {hub_id} --enable-lora --max-lora-rank 16 --lora-modules python-qa=" in script
