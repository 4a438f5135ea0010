"""Training throughput: codelora against the peers users pick instead, same rows, same LoRA, one run.

    python benchmarks/train_throughput.py                # ~16 min on 2 CPU cores (make bench)
    python benchmarks/train_throughput.py --skip-reference   # codelora fp32 and auto only, ~2 min
    python benchmarks/train_throughput.py --only trl-padding-free,codelora --steps 4

Variants, each in its own process (its own peak RSS), each training --steps measured optimizer
steps of batch 8 after --warmup steps, on the same rows of the data head:
- the seed recipe: transformers `Trainer` + peft, rows padded to 512, labels = inputs, dropout 0.05;
- TRL 1.16 `SFTTrainer` (the benchmark extra `trl`): dynamic padding, length-grouped, packing
  (bfd), padding_free, and padding_free with bf16 autocast where the machine's bf16 matmul peak is
  at least 1.5x its fp32 peak; prompt/completion chat rows, completion-only loss; CPU settings
  from TRL's docs (no gradient checkpointing, use_cpu);
- codelora in fp32, codelora's defaults (`train.precision: auto`, decided by its probe), and the
  defaults with `train.gradient_checkpointing` (the memory setting: forward recomputed in backward).
Every peer uses LoRA r=16, alpha 32 on q,k,v,o. Both the fp32 and the bf16 matmul peaks are
measured before and after the runs; the higher ones are used.

MFU = (4 x non-embedding params x real tokens + 4 x lm-head params x supervised tokens)
      / seconds / peak FLOP/s, against the fp32 peak and against the bf16 peak
(forward 2 FLOPs per weight and token, backward 2 more for the input gradient; the frozen base
needs no weight gradients; codelora's head runs only at supervised positions, the others' at every one.)

Prints the CPU, a table, the issue's targets (PASS/FAIL) and one JSON line (the last line).
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


def peak_gflops(seconds: float = 3.0, dtype: str = "fp32") -> float:
    """Best GFLOP/s of torch.mm in `dtype` over square and model-shaped products (this machine, now)."""
    import torch

    best = 0.0
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    for m, k, n in ((2048, 2048, 2048), (1024, 576, 1536), (1024, 1536, 576), (4096, 576, 576)):
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
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
    from codelora.data.pipeline import load_data

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
    from codelora.io.rundir import LOSS_LOG
    from codelora.models.lora import apply_lora
    from codelora.models.sources import load_base
    from codelora.training.outputs import LossLog
    from codelora.training.loop import fit
    from codelora.training.step import StepContext

    from transformers import AutoConfig

    from codelora.models.precision import choose_precision, fp32_attention_on_cpu, matmul_shape
    from codelora.models.sources import resolve_model

    shape = matmul_shape(AutoConfig.from_pretrained(resolve_model(ModelConfig(name=args.model)).path))
    precision = choose_precision(args.precision, "cpu", shape)  # as codelora's set-up does
    dtype = precision.dtype
    model, tok, _ = load_base(ModelConfig(name=args.model), "cpu", dtype=dtype)
    fp32_attention_on_cpu(model, precision, "cpu")
    if args.variant == "codelora-gc":  # as training/setup.py does for train.gradient_checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        log = LossLog.read(Path(tmp) / LOSS_LOG)
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
    return {"variant": args.variant, "precision": precision.name, "seconds": stats["train_seconds"],
            "tokens": stats["tokens"],
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


TRL_SETTINGS = {  # SFTTrainer's fastest CPU configurations (NOTES: padding_free and packing run on CPU with sdpa)
    "trl-dynamic": {},
    "trl-grouped": {"train_sampling_strategy": "group_by_length"},
    "trl-packing": {"packing": True, "packing_strategy": "bfd", "max_length": 512},
    "trl-padding-free": {"padding_free": True, "max_length": None},
    "trl-padding-free-bf16": {"padding_free": True, "max_length": None, "bf16": True},
}


def run_trl(args) -> dict:
    """TRL's SFTTrainer with peft LoRA (r16, alpha 32, q,k,v,o, no dropout: codelora's settings),
    completion-only loss on prompt/completion chat rows, the same rows in the same order."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from codelora.config import ModelConfig
    from codelora.data.prompts import user_message
    from codelora.models.sources import load_base

    model, tok, _ = load_base(ModelConfig(name=args.model), "cpu")
    rows = _rows(args.data, (args.warmup + args.steps) * args.batch_size)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": user_message(r)}],
                             "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    settings = {"max_length": 512, "train_sampling_strategy": "sequential", "bf16": False,
                **TRL_SETTINGS[args.variant]}

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens = [], []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, targs, state, *a, **k):
            self.times.append(time.perf_counter() - self.t)
            self.tokens.append(state.num_input_tokens_seen)

    timer = Timer()
    cfg = SFTConfig(output_dir=str(Path(args.tmp) / args.variant), per_device_train_batch_size=args.batch_size,
                    max_steps=args.warmup + args.steps, learning_rate=2e-4, use_cpu=True, gradient_checkpointing=False,
                    report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                    disable_tqdm=True, completion_only_loss=True, include_num_input_tokens_seen="non_padding",
                    **settings)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora,
                         callbacks=[timer])
    trainer.train()
    tokens = int(timer.tokens[-1] - timer.tokens[args.warmup - 1]) if args.warmup else int(timer.tokens[-1])
    non_emb, head = _param_counts(trainer.model)
    return {"variant": args.variant, "precision": "bf16" if settings["bf16"] else "fp32",
            "seconds": sum(timer.times[args.warmup:]), "tokens": tokens,
            "supervised_tokens": tokens,  # TRL's LM head scores every position
            "non_embedding_params": non_emb, "head_params": head, "threads": torch.get_num_threads(),
            "peak_rss_gb": peak_rss_gb()}


def mfu(r: dict, peak: float) -> float:
    flops = 4 * r["non_embedding_params"] * r["tokens"] + 4 * r["head_params"] * r["supervised_tokens"]
    return flops / r["seconds"] / (peak * 1e9)


NAMES = {"reference": "seed recipe (Trainer + peft, pad to 512)", "trl-dynamic": "TRL SFTTrainer, dynamic padding",
         "trl-grouped": "TRL SFTTrainer, length-grouped", "trl-packing": "TRL SFTTrainer, packing (bfd)",
         "trl-padding-free": "TRL SFTTrainer, padding_free", "trl-padding-free-bf16": "TRL SFTTrainer, padding_free, bf16",
         "codelora-fp32": "codelora, fp32", "codelora": "codelora defaults (precision auto)",
         "codelora-gc": "codelora defaults + gradient checkpointing"}


def run_variant(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size), "--data", str(args.data), "--model", args.model,
           *(["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"train_throughput: the {variant} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on other rows first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", type=Path, default=HEAD)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-batch-tokens", type=int, help="override codelora's train.max_batch_tokens default")
    p.add_argument("--only", help=f"comma-separated variants to run, of: {', '.join(NAMES)}")
    p.add_argument("--skip-reference", action="store_true", help="codelora's variants only")
    p.add_argument("--variant", choices=list(NAMES), help=argparse.SUPPRESS)  # child process
    p.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.data.is_file():
        sys.exit(f"train_throughput: data file not found: {args.data} (pass --data FILE with instruction/input/output)")

    if args.variant:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        args.precision = "fp32" if args.variant == "codelora-fp32" else "auto"
        run = run_codelora if args.variant.startswith("codelora") else (
            run_reference if args.variant == "reference" else run_trl)
        print("RESULT " + json.dumps(run(args)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, torch capability {cpu['capability']}, flags {cpu['flags']}",
          flush=True)
    # Peaks before and after the runs, the higher used: this machine's speed drifts over minutes,
    # and the higher peak gives the more conservative MFU.
    peaks = [(peak_gflops(), peak_gflops(dtype="bf16"))]
    print(f"matmul peak on this machine: fp32 {peaks[0][0]:.1f}, bf16 {peaks[0][1]:.1f} GFLOP/s", flush=True)
    bf16_fast = peaks[0][1] >= 1.5 * peaks[0][0]
    variants = args.only.split(",") if args.only else [
        v for v in NAMES if not (args.skip_reference and not v.startswith("codelora"))
        and (bf16_fast or not v.endswith("-bf16"))]
    results = {}
    for variant in variants:
        print(f"running {variant} ({args.warmup} warm-up + {args.steps} measured steps, batch {args.batch_size}) ...",
              flush=True)
        results[variant] = run_variant(args, variant)
    peaks.append((peak_gflops(), peak_gflops(dtype="bf16")))
    fp32_peak, bf16_peak = max(pk[0] for pk in peaks), max(pk[1] for pk in peaks)
    print(f"matmul peak again: fp32 {peaks[1][0]:.1f}, bf16 {peaks[1][1]:.1f}; using {fp32_peak:.1f} / {bf16_peak:.1f}")
    print(f"\n{MFU_FORMULA} (fp32 peak, and the bf16 peak)\n")
    print("| recipe | precision | real tokens | seconds | real tokens/s | MFU (fp32 peak) | MFU (bf16 peak) | peak RSS (GB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["mfu_fp32_peak"], r["mfu_bf16_peak"] = mfu(r, fp32_peak), mfu(r, bf16_peak)
        print(f"| {NAMES[v]} | {r.get('precision', 'fp32')} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:.1f} | {100 * r['mfu_fp32_peak']:.0f}% | {100 * r['mfu_bf16_peak']:.0f}% | "
              f"{r['peak_rss_gb']:.2f} |")
    print(json.dumps(summarize(args, results, peaks, fp32_peak, bf16_peak)))


def summarize(args, results: dict, peaks, fp32_peak: float, bf16_peak: float) -> dict:
    """Ratios against the peers, the issue's targets (printed PASS/FAIL), and the JSON line."""
    c = results.get("codelora")
    trl = {v: r for v, r in results.items() if v.startswith("trl")}
    best_trl = max(trl, key=lambda v: trl[v]["tokens_per_s"]) if trl else None
    ref, fp32 = results.get("reference"), results.get("codelora-fp32")
    out = {"benchmark": "train_throughput", "steps": args.steps, "batch_size": args.batch_size,
           "peak_gflops": {"fp32": round(fp32_peak, 1), "bf16": round(bf16_peak, 1)},
           "peaks_measured": [[round(a, 1), round(b, 1)] for a, b in peaks],
           "results": {v: {k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items()}
                       for v, r in results.items()}}
    if c is None:
        return out
    targets = []
    if best_trl:
        out["best_trl"] = best_trl
        out["speedup_vs_best_trl"] = round(c["tokens_per_s"] / trl[best_trl]["tokens_per_s"], 2)
        out["rss_vs_best_trl"] = round(c["peak_rss_gb"] / trl[best_trl]["peak_rss_gb"], 2)
        targets += [(f"codelora >= 2x the best TRL configuration ({best_trl})", out["speedup_vs_best_trl"] >= 2,
                     f"{out['speedup_vs_best_trl']}x"),
                    ("codelora peak RSS <= 1/3 of that TRL run's", out["rss_vs_best_trl"] <= 1 / 3,
                     f"{out['rss_vs_best_trl']}")]
    if ref:
        out["speedup_vs_reference"] = round(c["tokens_per_s"] / ref["tokens_per_s"], 2)
        targets.append(("codelora >= 8x the seed recipe", out["speedup_vs_reference"] >= 8,
                        f"{out['speedup_vs_reference']}x"))
    if fp32 and c.get("precision") == "bf16":
        out["bf16_vs_fp32"] = round(c["tokens_per_s"] / fp32["tokens_per_s"], 2)
        targets.append(("codelora bf16 >= 2x codelora fp32", out["bf16_vs_fp32"] >= 2, f"{out['bf16_vs_fp32']}x"))
    gc = results.get("codelora-gc")
    print()
    for what, ok, value in targets:
        print(f"target: {what}: {value} {'PASS' if ok else 'FAIL'}")
    if gc and best_trl:  # the memory setting, for comparison (not the defaults the targets are about)
        out["gc_speedup_vs_best_trl"] = round(gc["tokens_per_s"] / trl[best_trl]["tokens_per_s"], 2)
        out["gc_rss_vs_best_trl"] = round(gc["peak_rss_gb"] / trl[best_trl]["peak_rss_gb"], 2)
        print(f"with gradient checkpointing: {out['gc_speedup_vs_best_trl']}x the best TRL's tokens/s, "
              f"{out['gc_rss_vs_best_trl']} of its peak RSS")
    return out


if __name__ == "__main__":
    main()
