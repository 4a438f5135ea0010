"""The completeness check of an FSDP run's adapter (training/whole_adapter.py), against the failures the
peers shipped: a slice of a tensor, the right shape with one shard's rows zero, a zeroed lora_B, a
wrapper's prefix, a missing or foreign key, and a file whose values are not the model's."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from codelora.io.rundir import ADAPTER_WEIGHTS
from codelora.training.whole_adapter import AdapterNotWhole, check_whole, expected_shapes, nonzero_shards


@pytest.fixture
def saved(tiny_model_dir, tmp_path):
    """A LoRA adapter on the tiny model whose lora_B weights are non-zero, as after training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter" / ADAPTER_WEIGHTS


def mutate(path, fn):
    weights = load_file(path)
    fn(weights)
    save_file(weights, path)


def a_lora_b(weights):
    return next(k for k in sorted(weights) if "lora_B" in k)


def live(model, processes):
    """What each of `processes` processes would report of its shards of the (non-zero) lora_B weights."""
    flags = nonzero_shards(model)
    assert len(flags) == 4 and all(flags.values())
    return {k: [True] * processes for k in flags}


def test_a_whole_adapter_passes(saved):
    model, path = saved
    expected = expected_shapes(model)
    assert set(expected) == set(load_file(path)) and len(expected) == 8
    check_whole(path, expected, live(model, 2))
    check_whole(path, expected, live(model, 4))


@pytest.mark.parametrize("mutation,message", [
    (lambda w: w.__setitem__(a_lora_b(w), w[a_lora_b(w)][: w[a_lora_b(w)].shape[0] // 2].clone()), "a slice"),
    (lambda w: w[a_lora_b(w)][w[a_lora_b(w)].shape[0] // 2:].zero_(), "rows block 2 of 2 is zero in the file"),
    (lambda w: w[a_lora_b(w)].zero_(), "is all zero in the file but not in the trained model"),
    (lambda w: w.__setitem__("_fsdp_wrapped_module." + a_lora_b(w), w.pop(a_lora_b(w))), "wrapper's prefix"),
    (lambda w: w.pop(a_lora_b(w)), "is missing"),
    (lambda w: w[a_lora_b(w)].fill_(float("nan")), "NaN"),
])
def test_a_damaged_adapter_fails_the_check(saved, mutation, message):
    model, path = saved
    expected = expected_shapes(model)
    mutate(path, mutation)
    with pytest.raises(AdapterNotWhole, match=message) as e:
        check_whole(path, expected, live(model, 2))
    assert "\n" not in str(e.value) and "the run is not called done" in str(e.value)


def test_zero_lora_b_passes_where_the_trained_model_has_it_zero_too(saved):
    """e.g. one step at warm-up's learning rate 0: a zero lora_B is what trained, not a lost shard."""
    model, path = saved
    mutate(path, lambda w: [t.zero_() for k, t in w.items() if "lora_B" in k])
    check_whole(path, expected_shapes(model), {k: [False, False] for k in nonzero_shards(model)})
    with pytest.raises(AdapterNotWhole, match="all zero in the file but not in the trained model"):
        check_whole(path, expected_shapes(model), {k: [False, True] for k in nonzero_shards(model)})


def test_plain_peft_must_reproduce_the_sharded_logits(saved, tiny_model_dir, tmp_path):
    """The logits check: a file whose values are not those the model trained fails, the right one passes."""
    from codelora.config_parse import parse_config
    from codelora.training.whole_adapter import reload_and_compare

    model, path = saved
    cfg = parse_config({"model": {"name": str(tiny_model_dir)}})
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    with torch.no_grad():
        reference = model.eval()(**batch).logits
    plain, diff = reload_and_compare(cfg, path.parent, batch, reference, "cpu", torch.float32)
    assert diff <= 1e-5 and plain is not model
    mutate(path, lambda w: w[a_lora_b(w)].mul_(-50))  # whole and finite, but not what trained
    with pytest.raises(AdapterNotWhole, match="does not give the sharded model's logits"):
        reload_and_compare(cfg, path.parent, batch, reference, "cpu", torch.float32)


def test_what_fsdp_cannot_do_is_refused_in_one_line(tiny_model_dir, data_file, tmp_path):
    from cli_helpers import call_cli

    common = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-steps", "1"]
    r = call_cli(*common, "--out", str(tmp_path / "a"), "--set", "train.distributed=fsdp",
                 "--set", "train.fsdp_cpu_offload=true")
    assert r.returncode == 1 and "train.fsdp_cpu_offload: the weights already live in CPU memory" in r.stderr
    r = call_cli(*common, "--out", str(tmp_path / "b"), "--set", "train.fsdp_cpu_offload=true")
    assert r.returncode == 1 and "train.fsdp_cpu_offload goes with train.distributed: fsdp" in r.stderr
    r = call_cli(*common, "--out", str(tmp_path / "c"), "--set", "train.distributed=zero3")
    assert r.returncode != 0 and "train.distributed" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no run directory left behind
