"""The loss step: next-token cross-entropy over the supervised (answer) positions only.

The vocabulary projection is the most expensive matmul of a small model (49k x 576 for
SmolLM2), so it is applied only to the hidden states whose next token is supervised, never to
prompt or pad positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codelora.data.prompts import IGNORE_INDEX, Example
from codelora.training.batches import collate


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _has_logit_transform(config) -> bool:
    # Models that scale or cap logits after the head need their own forward.
    return any(getattr(config, a, None) not in (None, 1.0)
               for a in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"))


def supervised_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Return (sum of token losses, number of supervised tokens) for one batch."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    n = int(keep.sum())
    base = _unwrap(model)
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None or _has_logit_transform(base.config):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"), n
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), n


@torch.no_grad()
def mean_loss(model, batches) -> float:
    """Token-weighted mean loss over an iterable of batches (eval mode expected)."""
    total, count = 0.0, 0
    for batch in batches:
        s, n = supervised_loss_sum(model, batch)
        total += float(s)
        count += n
    return total / max(count, 1)


def device_batches(examples: list[Example], idx_batches: list[list[int]], pad_id: int, device: str):
    for idxs in idx_batches:
        yield {k: v.to(device) for k, v in collate([examples[i] for i in idxs], pad_id).items()}


def validation_loss(model, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float:
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    idx_batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return mean_loss(model, device_batches(examples, idx_batches, pad_id, device))
