"""Answers for many questions at once, stopping at the end-of-turn token: used by evaluation and
`ask`, with the settings of `GenerateConfig`.

Causal LMs go through the continuous batcher (`decoding/batcher.py`): prompts are fed shortest
first, at most `batch_size` run together, and a finished answer frees its slot at once.
Encoder-decoder models use transformers' `generate` on static, length-sorted, left-padded batches.
A GGUF file (`decoding/gguf_model.py`) answers in llama.cpp, one question after another.
Answers come back in the order of the questions. Evaluation passes `progress_desc` for a bar
with an ETA that moves as each answer is finished; `ask` and the server show none.
"""

from __future__ import annotations

import torch

from codelora.config import GenerateConfig
from codelora.console import progress
from codelora.decoding.batcher import Batcher, Sequence, left_pad
from codelora.decoding.gguf_model import GgufModel


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
                     on_update=None, seed: int | None = None, progress_desc: str | None = None) -> list[str]:
    """Greedy answers (temperature 0), or sampled ones (seeded per question from `seed` when given,
    else from torch's generator: seed torch first for repeatability). `on_update(seq, piece)`
    receives each piece of text as it is generated (causal LMs). `progress_desc`: show a bar
    (unit "answer") with this description; None shows none."""
    model.eval()
    prompts = [fmt.prompt_ids(q) for q in questions]
    with _answer_bar(len(prompts), progress_desc) as bar:
        if getattr(model.config, "is_encoder_decoder", False):
            return _static_batches(model, fmt, prompts, gen, batch_size, device, bar)
        base_seed = seed if seed is not None else (int(torch.randint(0, 2**62, (1,))) if gen.temperature > 0 else 0)
        on_update = _counting(on_update, bar) if progress_desc is not None else on_update
        seqs = [Sequence(p, gen, seed=base_seed + i, on_update=on_update) for i, p in enumerate(prompts)]
        if isinstance(model, GgufModel):  # a GGUF file in llama.cpp: one sequence at a time
            model.run(seqs, fmt.stop_ids)
            return [s.text for s in seqs]
        order = sorted(range(len(seqs)), key=lambda i: len(prompts[i]))
        Batcher(model, fmt.tok, fmt.stop_ids, batch_size, device).run([seqs[i] for i in order])
        return [s.text for s in seqs]


def _answer_bar(total: int, desc: str | None):
    return progress(total=total, desc=desc or "", unit="answer", show=desc is not None)  # ask: never a bar


def _counting(on_update, bar):
    """`on_update` that also moves `bar` when a sequence ends (the batcher and llama.cpp both report
    a sequence's end through its on_update, after setting its finish_reason)."""
    def update(seq, piece):
        if on_update is not None:
            on_update(seq, piece)
        if seq.done:
            bar.update(1)
    return update


def _static_batches(model, fmt, prompts: list[list[int]], gen: GenerateConfig, batch_size: int,
                    device: str, bar) -> list[str]:
    tok = fmt.tok
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = left_pad([prompts[i] for i in idx], tok.pad_token_id, device)
        out = model.generate(**enc, **decoding_kwargs(fmt, gen))  # an encoder-decoder returns only the decoder's tokens
        for row, i in zip(out, idx):
            answers[i] = tok.decode(row, skip_special_tokens=True).strip()
        bar.update(len(idx))
    return answers
