import time

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
def test_embedded_model_is_converted_once_then_cached():
    t0 = time.perf_counter()
    model, tok, source = load_base(ModelConfig(), "cpu")
    assert source.kind == "embedded" and source.details["gguf_file"].endswith(".gguf")
    assert (codelora_home() / "models" / "smollm2-135m" / "model.safetensors").is_file()
    assert model.dtype == torch.float32
    n = sum(p.numel() for p in model.parameters())
    assert n == 134_515_008  # SmolLM2-135M, tied embeddings counted once
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    model2, _, _ = load_base(ModelConfig(), "cpu")
    second = time.perf_counter() - t1
    assert second < first  # the second load reads the safetensors cache instead of the GGUF
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
