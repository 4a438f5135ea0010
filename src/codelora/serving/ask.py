"""`codelora ask`: answer one question with the base model or a trained adapter."""

from __future__ import annotations

import sys
from pathlib import Path

from codelora.config import EMBEDDED_MODEL, GenerateConfig, ModelConfig, TrainConfig, validated
from codelora.data.prompts import PromptFormat
from codelora.decoding.generate import generate_answers
from codelora.decoding.gguf_model import GgufModel, check_gguf_file, context_for, gguf_tokenizer
from codelora.errors import CodeloraError
from codelora.models.adapters import base_model_of, check_same_base
from codelora.models.lora import is_adapter_dir, load_adapter
from codelora.models.precision import precision_for
from codelora.models.sources import load_base, pick_device


def ask(question: str, adapter: str | None = None, model: str | None = None, gen: GenerateConfig | None = None,
        device: str = TrainConfig.device, precision: str = TrainConfig.precision, stream: bool = True) -> str:
    """Answer `question` (greedy by default) in `precision` (auto | fp32 | bf16); with `stream`, print
    tokens to stdout as they come."""
    if not question.strip():
        raise CodeloraError("the question is empty")
    gen = validated(gen or GenerateConfig())
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise CodeloraError(f"adapter directory not found: {adapter_dir}")
    if adapter_dir is not None and (adapter_dir / "config.json").is_file() and not is_adapter_dir(adapter_dir):
        raise CodeloraError(f"{adapter_dir} holds a whole model (a full / top-K run), not an adapter: "
                            f"use --model {adapter_dir}")
    if model:
        model_cfg = ModelConfig(name=model)
    else:
        model_cfg = base_model_of(adapter_dir) if adapter_dir else ModelConfig(name=EMBEDDED_MODEL)
    if model_cfg.task != "causal-lm":
        raise CodeloraError(f"codelora ask answers with causal language models; {adapter_dir} was trained with "
                            f"model.task={model_cfg.task}: see its eval_report.md, or run codelora eval {adapter_dir}")
    dev = pick_device(device)
    chosen = precision_for(precision, model_cfg, dev)
    base, tokenizer, source = load_base(model_cfg, dev, dtype=chosen.dtype)
    if adapter_dir is not None and model:
        check_same_base(adapter_dir, source)  # --model and an adapter trained on another base
    net = load_adapter(base, adapter_dir) if adapter_dir else base
    fmt = PromptFormat(tokenizer)
    (answer,) = generate_answers(net, fmt, [question], gen, 1, dev, on_update=_print_piece if stream else None)
    if stream:
        print(flush=True)
    return answer


def _print_piece(seq, piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def ask_gguf(question: str, path: str, gen: GenerateConfig | None = None, lora: str | None = None,
             stream: bool = True) -> str:
    """Answer `question` with a GGUF file (and optionally a GGUF LoRA on it) in llama.cpp."""
    if not question.strip():
        raise CodeloraError("the question is empty")
    gen = validated(gen or GenerateConfig())
    fmt = PromptFormat(gguf_tokenizer(check_gguf_file(path)))  # the file's own tokenizer and chat template
    model = GgufModel(path, n_ctx=context_for(len(fmt.prompt_ids(question)) + gen.max_new_tokens, path), lora=lora,
                      tokenizer=fmt.tok)
    try:
        (answer,) = generate_answers(model, fmt, [question], gen, 1, "cpu", on_update=_print_piece if stream else None)
    finally:
        model.close()
    if stream:
        print(flush=True)
    return answer
