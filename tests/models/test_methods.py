"""train.method full / top-K / none, and block/head discovery on the three model kinds.

Trainable-parameter counts are asserted against closed forms computed from the configs.
"""

import pytest
import torch

from codelora.config_parse import parse_config
from codelora.errors import ConfigError
from codelora.models.lora import count_parameters
from codelora.models.methods import block_stacks, set_trainable
from conftest import build_tiny_bert, build_tiny_model, build_tiny_t5, build_tokenizer


def llama_block(h=64, inter=128, heads=4, kv_heads=2) -> int:
    kv = h // heads * kv_heads
    return 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # q, o; k, v; gate, up, down; two RMSNorms


def test_block_stacks_of_each_model_kind():
    tok = build_tokenizer()
    assert [(n, len(s)) for n, s in block_stacks(build_tiny_model(tok))] == [("model.layers", 2)]
    assert [(n, len(s)) for n, s in block_stacks(build_tiny_t5(tok))] == [("encoder.block", 2), ("decoder.block", 2)]
    assert [(n, len(s)) for n, s in block_stacks(build_tiny_bert(tok))] == [("encoder.layer", 2)]


def test_full_none_and_top_k_on_a_decoder():
    tok = build_tokenizer()
    model = build_tiny_model(tok)
    set_trainable(model, "full", "causal-lm")
    trainable, total = count_parameters(model)
    assert trainable == total == 2 * llama_block() + len(tok) * 64 + 64  # blocks, tied embedding/head, final norm
    set_trainable(model, "none", "causal-lm")
    assert count_parameters(model)[0] == 0
    set_trainable(model, "top-1", "causal-lm")
    # the last block and the head; the head is tied to the input embedding, so that trains too
    assert count_parameters(model)[0] == llama_block() + len(tok) * 64
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert not model.model.norm.weight.requires_grad


def test_top_k_on_seq2seq_and_classifier():
    from transformers import AutoModelForSequenceClassification

    tok = build_tokenizer()
    t5 = build_tiny_t5(tok)
    set_trainable(t5, "top-1", "seq2seq")
    d, inner, ff, v = 32, 32, 64, len(tok)
    enc_block = 4 * d * inner + 2 * d * ff + 2 * d  # self-attention q,k,v,o; wi, wo; two layer norms
    dec_block = 8 * d * inner + 2 * d * ff + 3 * d  # self- and cross-attention
    # (the relative position bias lives in block 0 only, so the last block has none)
    assert count_parameters(t5)[0] == enc_block + dec_block + v * d  # + lm_head (tied to the shared embedding)

    cfg = build_tiny_bert(tok).config
    cfg.num_labels = 3
    bert = AutoModelForSequenceClassification.from_config(cfg)
    set_trainable(bert, "top-1", "classification")
    h, inter = 32, 64
    bert_block = 4 * (h * h + h) + 2 * (h * inter) + inter + h + 2 * 2 * h  # q,k,v,o (+bias); FFN; two LayerNorms
    assert count_parameters(bert)[0] == bert_block + h * 3 + 3  # + the classifier (weight + bias)


def test_top_k_beyond_the_model_names_the_method():
    with pytest.raises(ConfigError, match=r"top-3 asks for 3 blocks but model.layers has only 2"):
        set_trainable(build_tiny_model(build_tokenizer()), "top-3", "causal-lm")


@pytest.mark.parametrize("method", ["top-0", "top-", "top2", "qlora", "LORA"])
def test_bad_method_names_the_field(method):
    with pytest.raises(ConfigError, match=r"train.method must be lora, full, top-K"):
        parse_config({"train": {"method": method}})


def test_methods_that_train_base_weights_refuse_quantization():
    with pytest.raises(ConfigError, match=r"train.method=full trains the base weights"):
        parse_config({"train": {"method": "full"}, "model": {"quantize": "4bit"}})
    with pytest.raises(ConfigError, match=r"model.task must be one of causal-lm, seq2seq, classification"):
        parse_config({"model": {"task": "translation"}})


def test_full_fine_tuning_changes_only_what_trains():
    tok = build_tokenizer()
    model = build_tiny_model(tok)
    set_trainable(model, "top-1", "causal-lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([tok("def add(x): return x + 1")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.self_attn.q_proj.weight" not in changed
