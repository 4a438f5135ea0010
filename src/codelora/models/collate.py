"""Examples to model inputs: a batch right-padded to its longest row, moved to the device.

Training, validation loss and evaluation's classifier predictions all feed the model through
`collate`, so a batch means the same tensors everywhere.
"""

from __future__ import annotations

import torch

from codelora.data.prompts import IGNORE_INDEX, ClassExample, Example, Seq2SeqExample


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


def device_batches(examples: list[Example], idx_batches: list[list[int]], pad_id: int, device: str):
    for idxs in idx_batches:
        yield {k: v.to(device) for k, v in collate([examples[i] for i in idxs], pad_id).items()}
