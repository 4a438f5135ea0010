"""Training throughput: codelora's trainer (its defaults) vs the common LoRA recipe, same rows, same steps.

    python benchmarks/train_throughput.py                # ~6 min on 2 CPU cores
    python benchmarks/train_throughput.py --steps 4 --skip-reference   # codelora only, quick

The common recipe, as in the published LoRA reports: transformers `Trainer` + peft, rows padded
to 512 tokens (`padding="max_length"`), labels equal to the inputs (pads masked), LoRA r=16,
alpha=32, dropout 0.05 on q,k,v,o, fp32, batch 8. codelora: `fit()` with its defaults (LoRA r=16
on q,k,v,o, dropout 0, dynamic padding, length-grouped batches, answer-only loss computed only at
supervised positions). Both train `--steps` optimizer steps on the same rows of the data head,
after `--warmup` steps on other rows; every measured step is counted. Each variant runs in its
own process, so its peak RSS is its own. This machine's fp32 matmul peak is measured first.

MFU = (4 x non-embedding params x real tokens + 4 x lm-head params x supervised tokens)
      / seconds / peak FLOP/s
(forward 2 FLOPs per weight and token, backward 2 more for the input gradient; the frozen base
needs no weight gradients; the head runs only at supervised positions.)

Prints a table, then one JSON line (the last line) with speedup, mfu, tokens_per_s,
reference_tokens_per_s, peak_rss_gb, peak_gflops and more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO.parent / "shared" / "data" / "python-codes-25k.head356.jsonl"
MFU_FORMULA = ("MFU = (4 x non-embedding params x real tokens + 4 x lm-head params x supervised tokens) "
               "/ seconds / measured fp32 matmul peak")


def peak_gflops(seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of torch.mm over square and model-shaped products (this machine, now)."""
    import torch

    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (1024, 576, 1536), (1024, 1536, 576), (4096, 576, 576)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 4:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def _rows(path: Path, n: int) -> list[dict]:
    """The first n valid, cleaned rows of the head, through codelora's own data stage."""
    from codelora.config import DataConfig
    from codelora.data.dataset import load_data

    return load_data(DataConfig(source=str(path))).rows[:n]


def _param_counts(model) -> tuple[int, int]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings().weight.numel()
    emb = base.get_input_embeddings().weight.numel()
    total = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)  # tied weights count once
    return total - emb, head


def run_codelora(args) -> dict:
    import tempfile

    import torch

    from codelora.config import LoraSettings, ModelConfig, TrainConfig
    from codelora.data.prompts import PromptFormat
    from codelora.models.lora import apply_lora
    from codelora.models.sources import load_base
    from codelora.training.outputs import LossLog
    from codelora.training.loop import fit
    from codelora.training.step import StepContext

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model, tok, _ = load_base(ModelConfig(name=args.model), "cpu", dtype=dtype)
    if args.precision == "bf16":  # what codelora's set-up does for bf16 on a CPU
        from codelora.models.precision import Precision, fp32_attention_on_cpu

        fp32_attention_on_cpu(model, Precision(dtype, "bf16", "benchmark"), "cpu")
    model = apply_lora(model, LoraSettings())  # the defaults: r=16, alpha=32, dropout 0, q,k,v,o
    fmt = PromptFormat(tok)
    rows = _rows(args.data, (args.warmup + args.steps) * args.batch_size)
    examples = [fmt.encode(r) for r in rows]
    examples = [e for e in examples if len(e.input_ids) <= 512]
    warm, measured = examples[:args.warmup * args.batch_size], examples[args.warmup * args.batch_size:]
    tc = TrainConfig(batch_size=args.batch_size, save_every=0, epochs=1)  # codelora's defaults otherwise
    if args.max_batch_tokens:
        tc.max_batch_tokens = args.max_batch_tokens
    ctx = StepContext(model, tok.pad_token_id, "cpu", max_batch_tokens=tc.batch_token_budget("cpu"), dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        if warm:
            fit(ctx, warm, warm[:1], tc, 0, Path(tmp))
        stats = fit(ctx, measured, measured[:1], tc, 0, Path(tmp))
        log = LossLog.read(Path(tmp) / "loss_log.jsonl")
    steps = [e for e in log if e["split"] == "train"]
    assert len(steps) == args.steps, (len(steps), args.steps)
    supervised = sum(e.n_supervised for e in measured)

    # memory with long rows: one step on the longest rows of the head (up to 512 tokens), not timed
    longest = sorted((fmt.encode(r) for r in _rows(args.data, 356)), key=lambda e: -len(e.input_ids))
    longest = [e for e in longest if len(e.input_ids) <= 512][:args.batch_size]
    with tempfile.TemporaryDirectory() as tmp:
        fit(ctx, longest, longest[:1], TrainConfig(batch_size=args.batch_size, save_every=0, max_steps=1), 0,
            Path(tmp))  # the token budget is ctx's, as above
    non_emb, head = _param_counts(model)
    return {"variant": "codelora", "seconds": stats["train_seconds"], "tokens": stats["tokens"],
            "supervised_tokens": supervised, "non_embedding_params": non_emb, "head_params": head,
            "longest_row_tokens": len(longest[0].input_ids), "threads": torch.get_num_threads(),
            "peak_rss_gb": peak_rss_gb()}


def run_reference(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from codelora.config import ModelConfig
    from codelora.models.sources import load_base

    model, tok, _ = load_base(ModelConfig(name=args.model), "cpu")
    model.train()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rows = _rows(args.data, (args.warmup + args.steps) * args.batch_size)
    texts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"] + (f"\n{r['input']}" if r["input"] else "")},
                                      {"role": "assistant", "content": r["output"]}], tokenize=False) for r in rows]
    enc = tok(texts, padding="max_length", max_length=512, truncation=True)
    dataset = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    real = [sum(m) for m in enc["attention_mask"]]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    timer = Timer()
    targs = TrainingArguments(output_dir=str(Path(args.tmp) / "reference"), per_device_train_batch_size=args.batch_size,
                              max_steps=args.warmup + args.steps, learning_rate=2e-4, use_cpu=True, bf16=False,
                              report_to=[], save_strategy="no", logging_strategy="no",
                              train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, callbacks=[timer],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    measured_tokens = sum(real[args.warmup * args.batch_size:])
    non_emb, head = _param_counts(model)
    return {"variant": "reference", "seconds": sum(timer.times[args.warmup:]), "tokens": measured_tokens,
            "supervised_tokens": measured_tokens, "non_embedding_params": non_emb, "head_params": head,
            "threads": torch.get_num_threads(), "peak_rss_gb": peak_rss_gb()}


def mfu(r: dict, peak: float) -> float:
    flops = 4 * r["non_embedding_params"] * r["tokens"] + 4 * r["head_params"] * r["supervised_tokens"]
    return flops / r["seconds"] / (peak * 1e9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on other rows first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", type=Path, default=HEAD)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-batch-tokens", type=int, help="override codelora's train.max_batch_tokens default")
    p.add_argument("--skip-reference", action="store_true", help="measure codelora only")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="codelora's precision")
    p.add_argument("--variant", choices=["codelora", "reference"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.data.is_file():
        sys.exit(f"train_throughput: data file not found: {args.data} (pass --data FILE with instruction/input/output)")

    if args.variant:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        result = (run_codelora if args.variant == "codelora" else run_reference)(args)
        print("RESULT " + json.dumps(result))
        return

    # The peak is measured before and after the runs and the higher one used: this machine's speed
    # drifts by several percent over minutes, and the higher peak gives the more conservative MFU.
    peaks = [peak_gflops()]
    print(f"fp32 matmul peak on this machine: {peaks[0]:.1f} GFLOP/s", flush=True)
    results = {}
    for variant in (["codelora"] if args.skip_reference else ["reference", "codelora"]):
        print(f"running {variant} ({args.warmup} warm-up + {args.steps} measured steps, batch {args.batch_size}) ...",
              flush=True)
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--data", str(args.data), "--model", args.model,
               "--precision", args.precision,
               *(["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"train_throughput: the {variant} run failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])

    peaks.append(peak_gflops())
    peak = max(peaks)
    print(f"fp32 matmul peak again: {peaks[1]:.1f} GFLOP/s; using {peak:.1f}")
    print(f"\n{MFU_FORMULA}\n")
    print("| recipe | steps | real tokens | seconds | real tokens/s | MFU | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    names = {"reference": "common recipe (Trainer + peft, pad to 512)", "codelora": "codelora defaults"}
    for v, r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["mfu"] = mfu(r, peak)
        print(f"| {names[v]} | {args.steps} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{100 * r['mfu']:.0f}% | {r['peak_rss_gb']:.2f} |")
    c, ref = results["codelora"], results.get("reference")
    summary = {
        "benchmark": "train_throughput",
        "speedup": round(c["tokens_per_s"] / ref["tokens_per_s"], 2) if ref else None,
        "mfu": round(c["mfu"], 3),
        "tokens_per_s": round(c["tokens_per_s"], 1),
        "reference_tokens_per_s": round(ref["tokens_per_s"], 1) if ref else None,
        "reference_mfu": round(ref["mfu"], 3) if ref else None,
        "peak_rss_gb": round(c["peak_rss_gb"], 2),
        "reference_peak_rss_gb": round(ref["peak_rss_gb"], 2) if ref else None,
        "peak_gflops": round(peak, 1), "peak_gflops_measured": [round(x, 1) for x in peaks],
        "steps": args.steps, "batch_size": args.batch_size, "threads": c["threads"],
        "longest_row_tokens": c["longest_row_tokens"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
