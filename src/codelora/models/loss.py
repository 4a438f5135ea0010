"""The model's loss: next-token cross-entropy over the supervised (answer) positions only.

Training's step (`training/step.py`) and evaluation's validation loss use the same function, so
an eval loss and a training loss are the same quantity; it lives in models so that evaluation
never imports training.

The vocabulary projection is the most expensive matmul of a small model (49k x 576 for
SmolLM2), so it is applied only to the hidden states whose next token is supervised, never to
prompt or pad positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codelora.data.prompts import IGNORE_INDEX, Example
from codelora.models.collate import device_batches


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _has_logit_transform(config) -> bool:
    # Models that scale or cap logits after the head need their own forward.
    return any(getattr(config, a, None) not in (None, 1.0)
               for a in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"))


HEAD_CHUNK = 256  # rows of vocabulary-wide logits alive at once in the fused head loss (~50 MB for 49k words)


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ W^T, target_i) for a frozen head W, never holding all the logits.

    Logits are built HEAD_CHUNK rows at a time; the gradient with respect to the hidden states,
    (softmax - onehot) @ W, is computed right there and kept (n x d, small), so neither the
    logits nor their softmax are saved for backward. Same FLOPs as the plain path, a fraction of
    its memory: 8 rows x 400 answer tokens x 49k words of fp32 logits would be 630 MB, twice.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        for s in range(0, hidden.shape[0], HEAD_CHUNK):
            h, t = hidden[s:s + HEAD_CHUNK], targets[s:s + HEAD_CHUNK]
            logp = torch.log_softmax((h @ weight.T).float(), dim=-1)
            total -= logp.gather(1, t[:, None]).sum()
            if grad is not None:
                probs = logp.exp_()  # softmax, in place
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                grad[s:s + HEAD_CHUNK] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None


def _frozen_linear_head(head) -> bool:
    return (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
            and head.weight.is_floating_point())


def supervised_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Return (sum of token losses, number of supervised tokens) for one batch.

    Sums, not means: the caller divides by the supervised count of the whole optimizer step.
    """
    if "class_labels" in batch:  # one label per text
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["class_labels"], reduction="sum"), len(batch["class_labels"])
    if "decoder_labels" in batch:  # encoder-decoder: the model shifts the labels into decoder inputs itself
        targets = batch["decoder_labels"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets).logits
        keep = targets != IGNORE_INDEX
        return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"), int(keep.sum())
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
    hidden = hidden[:, :-1][keep]  # only positions whose next token is supervised reach the head
    if _frozen_linear_head(head):
        return _FrozenHeadCrossEntropy.apply(hidden, head.weight, targets[keep]), n
    return F.cross_entropy(head(hidden).float(), targets[keep], reduction="sum"), n  # a trained head (full tuning)


@torch.no_grad()
def validation_loss(model, examples: list[Example], batch_size: int, pad_id: int, device: str, dist=None,
                    loss_fn=None) -> float:
    """Token-weighted mean loss; with several processes each takes every world-th batch and the sums are reduced.

    `loss_fn(batch) -> (sum, count)` replaces supervised_loss_sum(model, batch): a sharded model's
    forward is a collective, so then every process also runs the same number of passes.
    """
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    idx_batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    mine = idx_batches[rank::world]
    passes = len(idx_batches[0::world]) if loss_fn is not None else len(mine)  # process 0 has the most
    mine += idx_batches[:1] * (passes - len(mine))  # extra passes, not counted
    total, count = 0.0, 0
    for k, batch in enumerate(device_batches(examples, mine, pad_id, device)):
        s, n = loss_fn(batch) if loss_fn is not None else supervised_loss_sum(model, batch)
        if k < len(idx_batches[rank::world]):
            total += float(s)
            count += n
    if world > 1:
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce_([sums])
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)
