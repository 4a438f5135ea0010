"""Benchmark: greedy generation one prompt at a time, in static batches (transformers'
`generate`) and through codelora's continuous batcher (`decoding/batcher.py`, what evaluation,
`ask` and the server use), the embedded model on the CPU.

    python benchmarks/generation.py [--prompts 16] [--batch-size 16] [--max-new-tokens 64] [--repeats 3]

Every prompt generates exactly --max-new-tokens tokens (no early stop), so all ways do the
same work (the batcher's advantage when answers end at different lengths is not measured
here: see the evaluation timing in docs/performance.md). Prints the CPU, a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from codelora.config import GenerateConfig, ModelConfig
from codelora.data.prompts import PromptFormat
from codelora.decoding.batcher import left_pad
from codelora.models.sources import load_base

QUESTIONS = [
    "Write a Python function that reverses a string.", "Write a function that checks whether a number is prime.",
    "Read a CSV file and print the number of rows.", "Merge two sorted lists into one sorted list.",
    "Count the words in a text file.", "Download a web page and print its title.",
    "Write a class for a stack with push and pop.", "Compute the factorial of n recursively.",
]


@torch.inference_mode()
def tokens_per_s(model, fmt, questions, batch_size, max_new_tokens) -> tuple[float, int]:
    tok = fmt.tok
    prompts = [fmt.prompt_ids(q) for q in questions]
    t0, total = time.perf_counter(), 0
    for i in range(0, len(prompts), batch_size):
        enc = left_pad(prompts[i:i + batch_size], tok.pad_token_id, "cpu")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        total += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return total / (time.perf_counter() - t0), total


@torch.inference_mode()
def batcher_tokens_per_s(model, fmt, questions, batch_size, max_new_tokens) -> tuple[float, int]:
    from codelora.decoding.batcher import Batcher, Sequence

    gen = GenerateConfig(max_new_tokens=max_new_tokens)
    seqs = [Sequence(fmt.prompt_ids(q), gen, min_new_tokens=max_new_tokens) for q in questions]
    t0 = time.perf_counter()
    Batcher(model, fmt.tok, fmt.stop_ids, batch_size).run(seqs)
    total = sum(len(s.tokens) for s in seqs)
    return total / (time.perf_counter() - t0), total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of the two batched modes; best of each")
    args = ap.parse_args()
    model, tok, _ = load_base(ModelConfig(), "cpu")
    fmt = PromptFormat(tok)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.prompts)]
    tokens_per_s(model, fmt, questions[:2], 2, 8)  # warm-up
    batcher_tokens_per_s(model, fmt, questions[:2], 2, 8)
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    single, n1 = tokens_per_s(model, fmt, questions, 1, args.max_new_tokens)
    runs = {"static": [], "batcher": []}
    for _ in range(args.repeats):  # alternating, best of each: this VM's speed drifts by 20-30% within minutes
        runs["static"].append(tokens_per_s(model, fmt, questions, args.batch_size, args.max_new_tokens))
        runs["batcher"].append(batcher_tokens_per_s(model, fmt, questions, args.batch_size, args.max_new_tokens))
    batched, n2 = max(runs["static"])
    continuous, n3 = max(runs["batcher"])
    print(f"| mode | tokens | tokens/s |\n| --- | ---: | ---: |\n| one prompt at a time | {n1} | {single:.1f} |\n"
          f"| static batches of {args.batch_size} (`generate`) | {n2} | {batched:.1f} |\n"
          f"| continuous batcher, {args.batch_size} slots | {n3} | {continuous:.1f} |")
    print(json.dumps({"single_tokens_per_s": round(single, 1), "batched_tokens_per_s": round(batched, 1),
                      "batcher_tokens_per_s": round(continuous, 1),
                      "runs": {k: [round(t, 1) for t, _ in v] for k, v in runs.items()}, "speedup": round(batched / single, 2),
                      "batcher_speedup": round(continuous / single, 2), "batch_size": args.batch_size,
                      "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                      "cpu": torch.backends.cpu.get_cpu_capability()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
