"""Batches: dynamic padding to the longest row, rows of similar length grouped together.

Padding to a fixed length spends most of a CPU's time on pad tokens; grouping by length keeps
each batch's padding small while the batch order stays random.
"""

from __future__ import annotations

import random

import torch

from codelora.data.prompts import IGNORE_INDEX, ClassExample, Example, Seq2SeqExample

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


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


def collate(examples: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; pads get attention 0 and label -100.

    The batch's keys say its kind: `labels` (causal LM: targets aligned with input_ids),
    `decoder_labels` (seq2seq: the answer, padded separately) or `class_labels` (one id per row).
    """
    if isinstance(examples[0], (Seq2SeqExample, ClassExample)):
        ids = _pad([e.input_ids for e in examples], pad_id)
        mask = _pad([[1] * len(e.input_ids) for e in examples], 0)
        if isinstance(examples[0], ClassExample):
            return {"input_ids": ids, "attention_mask": mask,
                    "class_labels": torch.tensor([e.label for e in examples], dtype=torch.long)}
        return {"input_ids": ids, "attention_mask": mask, "decoder_labels": _pad([e.labels for e in examples], IGNORE_INDEX)}
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
