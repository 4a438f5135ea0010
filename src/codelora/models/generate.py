"""Batched decoding with the KV cache, stopping at the end-of-turn token: used by evaluation,
`ask` and the server alike, with the settings of `GenerateConfig`.

Prompts are sorted by length and left-padded, so one batch holds prompts of similar length;
answers come back in the order of the questions.
"""

from __future__ import annotations

import torch

from codelora.config import GenerateConfig


def _left_pad(seqs: list[list[int]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def decoding_kwargs(fmt, gen: GenerateConfig) -> dict:
    """model.generate settings: greedy at temperature 0 (deterministic answers for evaluation),
    else sampled; stop at the end of the assistant's turn."""
    sampled = gen.temperature > 0
    return {
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": sampled,
        "temperature": gen.temperature if sampled else None,
        "top_p": gen.top_p if sampled else None,
        "top_k": None,
        "eos_token_id": fmt.stop_ids,
        "pad_token_id": fmt.tok.pad_token_id,
    }


@torch.inference_mode()
def generate_answers(model, fmt, questions: list[str], gen: GenerateConfig, batch_size: int, device: str,
                     streamer=None) -> list[str]:
    """Greedy answers (temperature 0), or sampled ones (seed torch first for repeatability)."""
    tok = fmt.tok
    prompts = [fmt.prompt_ids(q) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = _left_pad([prompts[i] for i in idx], tok.pad_token_id, device)
        out = model.generate(**enc, streamer=streamer, **decoding_kwargs(fmt, gen))
        # a decoder returns prompt + answer; an encoder-decoder only the decoder's tokens
        new = out if getattr(model.config, "is_encoder_decoder", False) else out[:, enc["input_ids"].shape[1]:]
        for row, i in zip(new, idx):
            answers[i] = tok.decode(row, skip_special_tokens=True).strip()
    return answers
