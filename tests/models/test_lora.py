import pytest

from codelora.config import LoraSettings
from codelora.errors import ConfigError
from codelora.models.lora import apply_lora, count_parameters
from conftest import build_tiny_model, build_tokenizer


def test_trainable_parameters_match_the_closed_form():
    model = build_tiny_model(build_tokenizer())
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, LoraSettings(r=4))
    trainable, total = count_parameters(peft_model)
    # hidden 64, 4 heads of 16, 2 kv heads: q,o are 64x64; k,v are 64x32; 2 layers
    per_layer = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))
    assert trainable == 2 * per_layer
    assert total == total_before + trainable


def test_all_linear_targets_the_mlp_too():
    peft_model = apply_lora(build_tiny_model(build_tokenizer()), LoraSettings(r=2, target_modules="all-linear"))
    names = {n.split(".")[-4] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def test_unknown_target_module_lists_the_real_ones():
    with pytest.raises(ConfigError) as e:
        apply_lora(build_tiny_model(build_tokenizer()), LoraSettings(target_modules=["query"]))
    assert "q_proj" in str(e.value) and "lora.target_modules" in str(e.value)
