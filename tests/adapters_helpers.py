"""Adapter folders for serving tests: written by codelora, by plain peft, and for another base."""

from __future__ import annotations

import sys
from pathlib import Path

from codelora.io.rundir import ADAPTER_WEIGHTS
import warm


def train_with_codelora(model_dir: Path, data: Path, out: Path, steps: int = 2, extra: tuple = ()) -> Path:
    r = warm.run([sys.executable, "-m", "codelora", "train", "--model", str(model_dir), "--data", str(data),
                  "--out", str(out), "--max-steps", str(steps), "--lr", "5e-3", *extra],
                 capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def save_plain_peft(model_dir: Path, out: Path, targets=("q_proj", "v_proj"), r: int = 4, seed: int = 1) -> Path:
    """An adapter made with nothing but transformers + peft, random B so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():  # make the adapter's effect large enough to change greedy tokens
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(20)
    model.save_pretrained(out)
    return out


def save_other_base_model(out: Path) -> Path:
    """A tiny model with another width: adapters trained on it do not fit the usual tiny base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def inject_nan(src: Path, dst: Path) -> Path:
    """A copy of an adapter folder with one NaN in a LoRA matrix."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / ADAPTER_WEIGHTS))
    key = sorted(k for k in weights if "lora_A" in k)[-1]
    weights[key][1, 2] = float("nan")
    save_file(weights, str(dst / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return dst
