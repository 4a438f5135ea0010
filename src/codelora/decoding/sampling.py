"""The next token of each row from its logits, each row with its own decoding settings.

Greedy rows take the argmax (the same token whatever else is in the batch). Sampled rows draw
with their own torch.Generator, so a seeded request gives the same answer alone or in a batch.
"""

from __future__ import annotations

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """-inf outside the smallest set of tokens whose probability reaches top_p (transformers' TopPLogitsWarper)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[-1:] = False  # always keep the most likely token
    drop = drop_sorted.scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, rows: list) -> list[int]:
    """One token per row of [rows, vocab] `logits`; `rows[i]` has .gen (temperature, top_p),
    .generator and .banned (token ids not allowed yet, e.g. the stop ids before min_new_tokens)."""
    logits = logits.float()
    out = []
    for i, row in enumerate(rows):
        scores = logits[i]
        if row.banned:
            scores = scores.clone()
            scores[list(row.banned)] = float("-inf")
        if row.gen.temperature == 0:
            out.append(int(scores.argmax()))
            continue
        scores = top_p_filter(scores / row.gen.temperature, row.gen.top_p)
        out.append(int(torch.multinomial(scores.softmax(-1), 1, generator=row.generator)))
    return out
