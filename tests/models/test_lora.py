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


# tiny model: hidden 64, 4 heads of 16, 2 kv heads -> q,o are 64x64 and k,v are 64x32 (d_out); 2 blocks
QKVO = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64)}  # (d_in, d_out)


def _closed_form(r, blocks, dora=False):
    per_block = sum(r * (d_in + d_out) + (d_out if dora else 0) for d_in, d_out in QKVO.values())
    return blocks * per_block


def test_layers_to_transform_adapts_only_those_blocks():
    peft_model = apply_lora(build_tiny_model(build_tokenizer()), LoraSettings(r=4, layers_to_transform=[1]))
    trainable, _ = count_parameters(peft_model)
    assert trainable == _closed_form(4, blocks=1)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


def test_dora_adds_one_magnitude_per_output_feature():
    peft_model = apply_lora(build_tiny_model(build_tokenizer()), LoraSettings(r=4, use_dora=True))
    assert count_parameters(peft_model)[0] == _closed_form(4, blocks=2, dora=True)


def test_rslora_scales_by_alpha_over_sqrt_r():
    for rs, expected in ((True, 32 / 16 ** 0.5), (False, 32 / 16)):
        peft_model = apply_lora(build_tiny_model(build_tokenizer()), LoraSettings(r=16, alpha=32, use_rslora=rs))
        q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        assert q.scaling["default"] == expected
        assert count_parameters(peft_model)[0] == _closed_form(16, blocks=2)


@pytest.mark.parametrize("layers, message", [([], "non-empty"), ([0, 0], "distinct"), ([-1], ">= 0"),
                                             ([2], "has 2 blocks, 0 to 1")])
def test_bad_layers_to_transform_name_the_field(layers, message):
    with pytest.raises(ConfigError, match="lora.layers_to_transform") as e:
        s = LoraSettings(layers_to_transform=layers)
        s.validate()
        apply_lora(build_tiny_model(build_tokenizer()), s)
    assert message in str(e.value)


def test_lora_on_an_encoder_decoder_matches_the_closed_form():
    from conftest import build_tiny_t5

    peft_model = apply_lora(build_tiny_t5(build_tokenizer()), LoraSettings(r=4, target_modules=["q", "k", "v", "o"]),
                            task="seq2seq")
    # encoder: 2 blocks x self-attention; decoder: 2 blocks x (self + cross); each q,k,v,o is 32 x 32
    matrices = 2 * 4 + 2 * 2 * 4
    assert count_parameters(peft_model)[0] == matrices * 4 * (32 + 32)
    assert type(peft_model).__name__ == "PeftModelForSeq2SeqLM"


def test_lora_on_a_classifier_trains_the_new_head_too():
    from transformers import AutoModelForSequenceClassification

    from conftest import build_tiny_bert

    cfg = build_tiny_bert(build_tokenizer()).config
    cfg.num_labels = 5
    model = AutoModelForSequenceClassification.from_config(cfg)
    peft_model = apply_lora(model, LoraSettings(r=8, target_modules=["query", "value"]), task="classification")
    # 2 blocks x (query, value), each 32 x 32, plus the classifier (32 x 5 + 5), saved as modules_to_save
    assert count_parameters(peft_model)[0] == 2 * 2 * 8 * (32 + 32) + 32 * 5 + 5
