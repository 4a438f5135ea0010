"""Training on a CUDA GPU: tokens/s, MFU and peak GPU memory for bf16, 8-bit and 4-bit (QLoRA) bases.

    python benchmarks/train_gpu.py                      # the embedded model, data head, batch 8 and 64
    python benchmarks/train_gpu.py --model DIR          # any local model directory

`--model DIR` may hold only config.json and the tokenizer: the weights are then random (same
architecture, so the same FLOPs and memory; throughput does not depend on weight values).
Each setting trains codelora's defaults (LoRA r=16 on q,k,v,o, dropout 0) for `--steps`
optimizer steps after `--warmup` steps. MFU uses the formula of train_throughput.py against this
GPU's measured bf16 matmul peak. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import HEAD, _param_counts, _rows  # noqa: E402


def bf16_peak_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 20 / (time.perf_counter() - t0) / 1e12


def model_dir(path: str) -> tuple[str, str]:
    p = Path(path)
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return path, "pretrained"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(tempfile.mkdtemp()) / p.name
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p)).save_pretrained(out)
    AutoTokenizer.from_pretrained(p).save_pretrained(out)
    return str(out), "random weights, same architecture"


def measure(model_path: str, quantize: str, batch: int, args) -> dict:
    import torch

    from codelora.config import LoraSettings, ModelConfig, TrainConfig
    from codelora.data.prompts import PromptFormat
    from codelora.models.lora import apply_lora
    from codelora.models.sources import load_base
    from codelora.training.loop import fit
    from codelora.models.precision import choose_precision
    from codelora.training.step import StepContext

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dtype = choose_precision("auto", "cuda", (0, 0)).dtype
    model, tok, _ = load_base(ModelConfig(name=model_path, quantize=quantize), "cuda", dtype=dtype)
    if quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = apply_lora(model, LoraSettings())
    fmt = PromptFormat(tok)
    examples = [fmt.encode(r) for r in _rows(args.data, (args.warmup + args.steps) * batch)]
    warm, measured = examples[:args.warmup * batch], examples[args.warmup * batch:]
    tc = TrainConfig(batch_size=batch, save_every=0)
    ctx = StepContext(model, tok.pad_token_id, "cuda", max_batch_tokens=tc.batch_token_budget("cuda"), dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        fit(ctx, warm, warm[:1], tc, 0, Path(tmp))
        torch.cuda.synchronize()
        stats = fit(ctx, measured, measured[:1], tc, 0, Path(tmp))
    non_emb, head = _param_counts(model)
    sup = sum(e.n_supervised for e in measured)
    flops = 4 * non_emb * stats["tokens"] + 4 * head * sup
    result = {"quantize": quantize, "precision": str(dtype).removeprefix("torch."), "batch": batch,
              "steps": stats["steps"], "tokens": stats["tokens"], "seconds": stats["train_seconds"],
              "tokens_per_s": stats["tokens_per_s"], "tflops": flops / stats["train_seconds"] / 1e12,
              "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024 ** 3}
    del model
    return result


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", type=Path, default=HEAD)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    p.add_argument("--quantize", nargs="+", default=["none", "8bit", "4bit"])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_gpu: no CUDA GPU here; this benchmark measures the GPU path (see train_throughput.py for CPU)")
    path, weights = model_dir(args.model)
    peak = bf16_peak_tflops()
    print(f"{torch.cuda.get_device_name()}: bf16 matmul peak {peak:.0f} TFLOP/s; model {args.model} ({weights})")
    print("| base | batch | real tokens/s | MFU (vs bf16 peak) | peak GPU memory (GB) |")
    print("| --- | --- | --- | --- | --- |")
    results = []
    for q in args.quantize:
        for b in args.batch:
            r = measure(path, q, b, args)
            r["mfu"] = r["tflops"] / peak
            results.append(r)
            name = {"none": f"{r['precision']}", "8bit": "int8 (bitsandbytes)", "4bit": "NF4 (QLoRA)"}[q]
            print(f"| {name} | {b} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.2f}% | {r['peak_gpu_gb']:.2f} |",
                  flush=True)
    print(json.dumps({"benchmark": "train_gpu", "device": torch.cuda.get_device_name(), "bf16_peak_tflops": round(peak),
                      "weights": weights, "results": results}))


if __name__ == "__main__":
    main()
