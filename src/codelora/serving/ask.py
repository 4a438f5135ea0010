"""`codelora ask`: answer one question with the base model or a trained adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from codelora.config import EMBEDDED_MODEL, ModelConfig
from codelora.data.prompts import PromptFormat
from codelora.errors import CodeloraError
from codelora.evaluation.generate import generate_answers
from codelora.models.lora import load_adapter
from codelora.models.sources import load_base, pick_device


def base_model_of(adapter_dir: Path) -> str:
    """The base model an adapter was trained on: the run's config, else peft's adapter_config."""
    run_config = adapter_dir / "config.yaml"
    if run_config.is_file():
        name = ((yaml.safe_load(run_config.read_text()) or {}).get("model") or {}).get("name")
        if name:
            return name
    peft_config = adapter_dir / "adapter_config.json"
    if peft_config.is_file():
        name = json.loads(peft_config.read_text()).get("base_model_name_or_path")
        if name:
            return name
    return EMBEDDED_MODEL


def ask(question: str, adapter: str | None = None, model: str | None = None, max_new_tokens: int = 256,
        device: str = "auto", stream: bool = True) -> str:
    """Answer `question` greedily; with `stream`, print tokens to stdout as they come."""
    if not question.strip():
        raise CodeloraError("the question is empty")
    if max_new_tokens < 1:
        raise CodeloraError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise CodeloraError(f"adapter directory not found: {adapter_dir}")
    name = model or (base_model_of(adapter_dir) if adapter_dir else EMBEDDED_MODEL)
    dev = pick_device(device)
    base, tokenizer, _ = load_base(ModelConfig(name=name), dev)
    net = load_adapter(base, adapter_dir) if adapter_dir else base
    fmt = PromptFormat(tokenizer)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    (answer,) = generate_answers(net, fmt, [question], max_new_tokens, 1, dev, streamer=streamer)
    if stream:
        sys.stdout.flush()
    return answer
