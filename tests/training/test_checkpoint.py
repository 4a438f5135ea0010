"""Checkpoint files: atomic layout, sha256 verification, pruning, and loading that never unpickles code."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from codelora.config import LoraSettings
from codelora.errors import CodeloraError
from codelora.io.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, checkpoint_name
from codelora.models.lora import apply_lora, load_adapter
from codelora.training.checkpoint import (CheckpointError, find_latest, load_checkpoint, save_checkpoint, verify)


class Planted:
    """Unpickling this creates `path`: what a malicious checkpoint file would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    return apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings(r=2, alpha=4, dropout=0.0))


def one_step(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    opt.step()
    return opt


def rehash(ckpt_dir, name):
    """Update the manifest as an attacker with write access would, so only the loader can refuse."""
    import hashlib

    manifest = json.loads((ckpt_dir / "checkpoint.json").read_text())
    data = (ckpt_dir / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt_dir / "checkpoint.json").write_text(json.dumps(manifest))


def test_save_verify_load_restores_weights_optimizer_and_rngs(lora_model, tmp_path):
    opt = one_step(lora_model)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 7, lora_model, opt, {"progress": {"step": 7}}, keep=2)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    weights = {k: v.clone() for k, v in lora_model.state_dict().items() if "lora_" in k}
    exp_state = opt.state_dict()["state"]

    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "checkpoint.json", "optimizer.pt", "rng_state.pt",
                                                      "trainer_state.json"]
    ckpt = verify(path)
    assert ckpt.step == 7 and ckpt.complete
    with torch.no_grad():
        for n, p in lora_model.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    opt2 = torch.optim.AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    state = load_checkpoint(ckpt, lora_model, opt2, allow_partial=False)
    assert state == {"progress": {"step": 7}}
    now = {k: v for k, v in lora_model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(now[k], weights[k]) for k in weights)
    for i, s in exp_state.items():
        assert torch.equal(opt2.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_only_the_newest_k_are_kept_and_a_damaged_newest_falls_back(lora_model, tmp_path, capsys):
    opt = one_step(lora_model)
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, lora_model, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006", "step-00000008"]
    with open(tmp_path / checkpoint_name(8) / ADAPTER_WEIGHTS, "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")  # a flipped byte, same size
    (tmp_path / ".tmp-step-00000010-123").mkdir()  # a write cut off by kill -9
    assert find_latest(tmp_path).step == 6
    err = capsys.readouterr().err
    assert "removing .tmp-step-00000010-123" in err
    assert "skipping checkpoint step-00000008: adapter_model.safetensors does not match its sha256" in err
    assert not (tmp_path / ".tmp-step-00000010-123").exists()


def test_a_checkpoint_without_a_manifest_is_not_used(lora_model, tmp_path):
    path = save_checkpoint(tmp_path, 1, lora_model, one_step(lora_model), {}, keep=2)
    (path / "checkpoint.json").unlink()
    assert find_latest(tmp_path) is None


@pytest.mark.parametrize("name,what", [("optimizer.pt", "optimizer state"), ("rng_state.pt", "RNG state")])
def test_planted_pickles_are_refused_and_never_run(lora_model, tmp_path, name, what):
    opt = one_step(lora_model)
    path = save_checkpoint(tmp_path / "ckpts", 3, lora_model, opt, {}, keep=2)
    sentinel = tmp_path / "sentinel"
    torch.save({"state": Planted(sentinel)}, path / name)
    rehash(path, name)
    with pytest.raises(CheckpointError, match=f"refusing .*{name}: the {what} holds objects other than tensors"):
        load_checkpoint(verify(path), lora_model, opt, allow_partial=False)
    assert not sentinel.exists()
    # the payload is live: an unsafe loader in another process would have run it
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path / name)!r}, weights_only=False)"],
                   capture_output=True, timeout=120)
    assert sentinel.exists()


def test_a_planted_adapter_bin_is_never_loaded(lora_model, tiny_model_dir, tmp_path):
    path = save_checkpoint(tmp_path / "ckpts", 3, lora_model, one_step(lora_model), {}, keep=2)
    sentinel = tmp_path / "sentinel"
    (path / ADAPTER_WEIGHTS).unlink()
    torch.save({"w": Planted(sentinel)}, path / "adapter_model.bin")
    assert find_latest(tmp_path / "ckpts") is None  # the manifest's adapter file is missing
    with pytest.raises(CodeloraError, match="no adapter_model.safetensors; codelora loads adapters only as safetensors"):
        load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path)
    from cli_helpers import run_cli

    r = run_cli("ask", "hi", "--adapter", path, "--model", tiny_model_dir, "--max-new-tokens", "2", timeout=300)
    assert r.returncode == 1 and "loads adapters only as safetensors" in r.stderr
    assert not sentinel.exists()


def test_a_checkpoint_without_optimizer_or_rng_needs_allow_partial(lora_model, tmp_path):
    opt = one_step(lora_model)
    path = save_checkpoint(tmp_path, 5, lora_model, opt, {"progress": {}}, keep=2)
    for name in ("optimizer.pt", "rng_state.pt"):
        (path / name).unlink()
    manifest = json.loads((path / "checkpoint.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(".pt")}
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    ckpt = verify(path)
    assert not ckpt.complete
    with pytest.raises(CheckpointError, match="has no optimizer.pt or rng_state.pt.*--allow-partial-resume"):
        load_checkpoint(ckpt, lora_model, opt, allow_partial=False)
    assert load_checkpoint(ckpt, lora_model, opt, allow_partial=True) == {"progress": {}}


def test_top_k_checkpoint_holds_only_the_trained_weights_and_restores_them(tmp_path, tiny_model_dir):
    from codelora.models.methods import set_trainable

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    set_trainable(model, "top-1", "causal-lm")
    opt = one_step(model)
    path = save_checkpoint(tmp_path / CHECKPOINTS, 1, model, opt, {"progress": {}}, keep=2)
    ckpt = verify(path)
    assert "trainable.safetensors" in ckpt.files and "adapter_model.safetensors" not in ckpt.files
    from safetensors.torch import load_file

    saved = load_file(path / "trainable.safetensors")
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    set_trainable(fresh, "top-1", "causal-lm")
    load_checkpoint(ckpt, fresh, torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad]), False)
    assert all(torch.equal(p, trained[n]) for n, p in fresh.named_parameters())

    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    set_trainable(other, "full", "causal-lm")  # another method: the checkpoint does not fit
    with pytest.raises(CheckpointError, match="another lora config or train.method"):
        load_checkpoint(ckpt, other, torch.optim.AdamW([p for p in other.parameters() if p.requires_grad]), False)
