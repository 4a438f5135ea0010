import pytest
import torch

from codelora.config import ModelConfig
from codelora.errors import ModelError
from codelora.models.sources import codelora_home, load_base, resolve_model


def test_local_directory(tiny_model_dir):
    model, tok, source = load_base(ModelConfig(name=str(tiny_model_dir)), "cpu")
    assert source.kind == "local" and model.dtype == torch.float32
    assert tok.pad_token_id is not None


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelError, match="model directory not found"):
        resolve_model(ModelConfig(name=str(tmp_path / "nope")))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(ModelConfig(name=str(tmp_path)))


def test_unknown_hub_id_offline_is_one_clear_line():
    with pytest.raises(ModelError) as e:
        load_base(ModelConfig(name="no-such-org/no-such-model"), "cpu")
    msg = str(e.value)
    assert "Hugging Face Hub is unreachable" in msg and "--model" in msg and "\n" not in msg


@pytest.mark.slow
def test_embedded_model_is_converted_once_then_cached(embedded_base, tmp_path, monkeypatch, capsys):
    if embedded_base.converted:  # the session's cache was empty: its conversion (conftest) is the one checked
        printed = embedded_base.stderr
    else:  # a cache filled before this session (CODELORA_TEST_HOME): convert into an empty one
        monkeypatch.setenv("CODELORA_HOME", str(tmp_path))
        resolve_model(ModelConfig())
        printed = capsys.readouterr().err
    assert "converting the embedded model" in printed
    model, tok, source = load_base(ModelConfig(), "cpu")
    assert "converting" not in capsys.readouterr().err
    cache = codelora_home() / "models" / "smollm2-135m"
    assert source.kind == "embedded" and source.path == str(cache)
    assert source.details["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(source.details["gguf_sha256"]) == 64
    assert (cache / "model.safetensors").is_file() and not list(cache.parent.glob(".smollm2-135m-*"))
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>")

    model2, _, _ = load_base(ModelConfig(), "cpu")
    assert "converting" not in capsys.readouterr().err  # the second load reads the safetensors cache
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)

    (cache / "model.safetensors").unlink()  # a damaged cache is rebuilt, not an error
    load_base(ModelConfig(), "cpu")
    assert "converting the embedded model" in capsys.readouterr().err

    # bf16 loads read a bf16 copy written once beside it: the same rounding as casting the fp32 load
    half, _, half_source = load_base(ModelConfig(), "cpu", dtype=torch.bfloat16)
    assert (cache.parent / "smollm2-135m-bf16" / "model.safetensors").is_file()
    assert half_source.path == str(cache) and half.dtype == torch.bfloat16
    sd_half = half.state_dict()
    assert sd_half.keys() == sd1.keys() and all(torch.equal(sd_half[k], sd1[k].to(torch.bfloat16)) for k in sd1)
    assert half.lm_head.weight.data_ptr() == half.model.embed_tokens.weight.data_ptr()  # still tied
    # the real model in bf16 (ask / serve on a bf16 CPU) predicts as in fp32, up to bf16 rounding
    # (measured: top-1 0.95, max KL 0.017, mean KL 0.0025 over a 39-token chat prompt)
    from codelora.data.prompts import PromptFormat

    ids = torch.tensor([PromptFormat(tok).prompt_ids("Write a Python function that adds two numbers.")])
    with torch.inference_mode():
        full, low = model(ids).logits[0].float().log_softmax(-1), half(ids).logits[0].float().log_softmax(-1)
    kl = (full.exp() * (full - low)).sum(-1)
    assert (full.argmax(-1) == low.argmax(-1)).float().mean() >= 0.85 and kl.max() < 0.1 and kl.mean() < 0.01
    copy = cache.parent / "smollm2-135m-bf16" / "model.safetensors"
    stamp = copy.stat().st_mtime_ns
    load_base(ModelConfig(), "cpu", dtype=torch.bfloat16)
    assert copy.stat().st_mtime_ns == stamp  # made once
    source_file = cache / "codelora_source.json"
    recorded = source_file.read_text()
    source_file.write_text(recorded.replace(source.details["gguf_sha256"], "0" * 64))
    try:
        load_base(ModelConfig(), "cpu", dtype=torch.bfloat16)
        assert copy.stat().st_mtime_ns != stamp  # made again from a float32 cache of another GGUF
    finally:
        source_file.write_text(recorded)  # the cache may be the session's: leave it as it was
