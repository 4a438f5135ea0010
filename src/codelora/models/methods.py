"""Training methods other than LoRA, the baselines of the LoRA studies: full fine-tuning, the
top-K blocks only, and none.

`top-K` trains the last K blocks of every block stack (a decoder's one stack; an encoder-decoder's
encoder and decoder stacks) plus the output head; norms and embeddings outside them stay frozen,
except where the head *is* the input embedding (tied weights, as in SmolLM2): then it trains too.
"""

from __future__ import annotations

import torch

from codelora.config import parse_method
from codelora.errors import ConfigError

CLASSIFIER_HEADS = ("classifier", "score")  # the head of transformers' *ForSequenceClassification models


def block_stacks(model) -> list[tuple[str, torch.nn.ModuleList]]:
    """The transformer block lists: outermost ModuleLists of same-class modules holding linear layers."""
    found: list[tuple[str, torch.nn.ModuleList]] = []
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.ModuleList) or not len(m) or len({type(c) for c in m}) != 1:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue  # a list inside a block (T5's sub-layers), not a stack of blocks
        if any(isinstance(x, torch.nn.Linear) or type(x).__name__ == "Conv1D" for x in m[0].modules()):
            found.append((name, m))
    return found


def head_modules(model, task: str) -> list[torch.nn.Module]:
    if task == "classification":
        heads = [m for n, m in model.named_children() if n in CLASSIFIER_HEADS]
    else:
        heads = [model.get_output_embeddings()]
    if not heads or any(h is None for h in heads):
        raise ConfigError(f"train.method top-K needs the model's output head; {type(model).__name__} has none "
                          f"that codelora recognises")
    return heads


def set_trainable(model, method: str, task: str) -> None:
    """requires_grad per the method: full -> every weight, top-K -> the last K blocks + head, none -> nothing."""
    kind, k = parse_method(method)
    if kind == "lora":
        raise ValueError("LoRA is applied by models.lora.apply_lora")
    model.requires_grad_(kind == "full")
    if kind != "top":
        return
    stacks = block_stacks(model)
    if not stacks:
        raise ConfigError(f"train.method={method}: found no block stack in {type(model).__name__}")
    for name, stack in stacks:
        if k > len(stack):
            raise ConfigError(f"train.method={method} asks for {k} blocks but {name} has only {len(stack)}; "
                              f"use top-1 to top-{len(stack)} or full")
        for block in stack[-k:]:
            block.requires_grad_(True)
    for head in head_modules(model, task):
        head.requires_grad_(True)
