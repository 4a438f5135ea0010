"""Adapter folders checked before they touch a model: which base they were trained on, whether
their matrices fit the base, whether their weights are finite."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from adapters_helpers import save_other_base_model, save_plain_peft
from codelora.config import EMBEDDED_MODEL
from codelora.errors import ModelError
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from codelora.models.adapters import base_model_of, check_finite, check_same_base, check_shapes
from codelora.models.sources import ModelSource


def _local(path) -> ModelSource:
    return ModelSource(name=str(path), kind="local", path=str(path))


def test_the_base_of_a_plain_peft_adapter_and_of_a_folder_that_records_none(tiny_model_dir, tmp_path):
    adapter = save_plain_peft(tiny_model_dir, tmp_path / "a")
    assert base_model_of(adapter).name == str(tiny_model_dir)
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    cfg["base_model_name_or_path"] = None
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    assert base_model_of(adapter).name == EMBEDDED_MODEL  # nothing recorded: the embedded default
    check_same_base(adapter, _local(tmp_path))  # records none: passes here, the shapes decide


def test_an_adapter_of_another_base_is_refused_by_name_and_by_shape(tiny_model_dir, tmp_path):
    other = save_other_base_model(tmp_path / "other-base")
    adapter = save_plain_peft(other, tmp_path / "a")
    with pytest.raises(ModelError, match=r"was trained on base model .*other-base.*serve it with --model"):
        check_same_base(adapter, _local(tiny_model_dir))
    check_same_base(adapter, _local(other))
    with pytest.raises(ModelError, match=r"does not fit this base model .*lora_A.*needs 64, the adapter has 32"):
        check_shapes(adapter, AutoModelForCausalLM.from_pretrained(tiny_model_dir))


def test_a_nan_in_an_adapter_is_named(tiny_model_dir, tmp_path):
    adapter = save_plain_peft(tiny_model_dir, tmp_path / "a")
    check_finite(adapter)
    path = adapter / ADAPTER_WEIGHTS
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(ModelError, match=rf"tensor {name} holds 1 NaN/Inf values"):
        check_finite(adapter)
    assert torch.isnan(load_file(str(path))[name]).sum() == 1
