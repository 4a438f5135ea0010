"""Training batches: rows of similar length grouped together, micro-batches split to a token budget.

Each batch is padded to its own longest row (`models/collate.py`); padding to a fixed length
would spend most of a CPU's time on pad tokens. Grouping by length keeps each batch's padding
small while the batch order stays random.
"""

from __future__ import annotations

import random

from codelora.data.prompts import Example

GROUP_SIZE = 32  # batches per length-sorted group


def length_grouped_batches(examples: list[Example], batch_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    span = batch_size * GROUP_SIZE
    for start in range(0, len(order), span):
        group = sorted(order[start:start + span], key=lambda i: len(examples[i].input_ids), reverse=True)
        batches += [group[j:j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def split_to_budget(batch: list[int], examples: list[Example], max_tokens: int) -> list[list[int]]:
    """Split a micro-batch whose padded size (rows x longest row) exceeds `max_tokens`.

    The pieces are summed into the same gradient (the loss is normalised by the whole window's
    supervised tokens), so the result does not change; only peak memory does. Longest rows first,
    so each piece pads little.
    """
    order = sorted(batch, key=lambda i: len(examples[i].input_ids), reverse=True)
    pieces, piece, width = [], [], 0
    for i in order:
        n = len(examples[i].input_ids)
        if piece and (len(piece) + 1) * max(width, n) > max_tokens:
            pieces.append(piece)
            piece, width = [], 0
        piece.append(i)
        width = max(width, n)
    return pieces + [piece] if piece else pieces
