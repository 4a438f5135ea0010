"""Fixtures for the GGUF tests: llama.cpp present (or a failure where CI requires it), and a tiny
Llama that llama.cpp's converter accepts (the embedded SmolLM2 tokenizer: the converter only
knows the pre-tokenizers of real models, not the tests' tiny BPE)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

CONVERTERS = Path(os.environ.get("CODELORA_LLAMA_CPP") or Path(sys.prefix) / "share" / "codelora" / "llama.cpp")


def require_llama_cpp() -> None:
    missing = [what for what, ok in (("llama-cpp-python", importlib.util.find_spec("llama_cpp") is not None),
                                     ("llama.cpp's converters", (CONVERTERS / "convert_hf_to_gguf.py").is_file()))
               if not ok]
    if missing:
        why = f"{' and '.join(missing)} not installed (make install-gguf)"
        if os.environ.get("CODELORA_REQUIRE_LLAMA_CPP"):
            pytest.fail(f"{why}, and CODELORA_REQUIRE_LLAMA_CPP is set")
        pytest.skip(why)


def save_tiny_smollm(out: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer model (hidden 64) with the embedded SmolLM2 tokenizer; `arch` llama or opt."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from codelora.config import ModelConfig
    from codelora.models.sources import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(ModelConfig()))
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=1024, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.bos_token_id)
    if arch == "opt":
        model = OPTForCausalLM(OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True,
                                             rope_theta=10000.0, initializer_range=0.1, **common))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
