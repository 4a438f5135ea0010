"""GPU check: plain LoRA (bf16), QLoRA (4-bit base) and FSDP on every visible GPU, small and 1B-class models.

    python benchmarks/gpu_check.py                    # ~5-10 min on one H100; all GPUs for the fsdp row
    python benchmarks/gpu_check.py --models embedded --steps 5 --json-out gpu.json

For a CUDA machine. Without a CUDA GPU it prints one line and exits with code 2 ("not checked":
neither a pass nor a failure; scripts can tell it from 0 = checked and 1 = a run failed).

Models: the embedded SmolLM2-135M, and a 1B-class Llama with random weights built from a config
(hidden 2048, 16 layers, 32 heads, intermediate 5632; the vocabulary is the embedded tokenizer's,
49152, instead of Llama's 32000, so that its token ids fit: ~1.0B parameters with an untied head),
saved in bf16 to a temp folder with the embedded model's tokenizer. Throughput and memory do not
depend on weight values.

Modes, each training codelora's defaults (LoRA r=16 on q,k,v,o) for --steps optimizer steps of
--batch-size rows of the data head, train.precision auto (bf16 on these GPUs):
- lora-bf16: the base in bf16, one process, in this process (codelora.experiments.run.run);
- qlora-4bit: model.quantize=4bit (NF4, bitsandbytes), one process, in this process;
- fsdp: `torchrun --standalone --nproc_per_node <GPUs> -m codelora train ... --set
  train.distributed=fsdp` (one GPU: one process, nothing to shard; the path still runs);
- fsdp-qlora: the same with --quantize 4bit (the packed 4-bit weights stored in bf16, as FSDP needs).

tokens/s: the run's manifest (train.tokens_per_s, all processes together). Peak GPU memory: in
this process torch.cuda.max_memory_allocated (reset before each run; it covers loading and
training); for the torchrun subprocess, `nvidia-smi --query-gpu=memory.used` sampled every 0.2 s (per GPU,
max over the run minus what was in use before it: the processes' CUDA contexts, the allocator's
cache, and the check after training that reloads the adapter on rank 0 are included, so it reads
higher than max_memory_allocated would).

Prints the GPUs, a markdown table and one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO.parent / "shared" / "data" / "python-codes-25k.head356.jsonl"
TORCHRUN = Path(sys.executable).with_name("torchrun")
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=5632, max_position_embeddings=2048, tie_word_embeddings=False)
MODES = ("lora-bf16", "qlora-4bit", "fsdp", "fsdp-qlora")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="embedded,llama-1b", help="comma-separated: embedded, llama-1b")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run (at least 2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", type=Path, default=HEAD)
    p.add_argument("--json-out", type=Path, help="also write the JSON result to this file")
    return p.parse_args()


def build_llama_1b(out: Path) -> tuple[Path, int]:
    """A random-weight 1B-class Llama in bf16 with the embedded model's tokenizer, saved to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from codelora.config import ModelConfig
    from codelora.models.sources import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(ModelConfig()))  # the embedded SmolLM2 tokenizer (chat template included)
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, **LLAMA_1B)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return out, n


def config_for(model: str, mode: str, args, out: Path) -> dict:
    return {"out": str(out), "model": {"name": model, "quantize": "4bit" if "qlora" in mode else "none"},
            "data": {"source": str(args.data), "limit": max(64, int(args.steps * args.batch_size * gpu_count() / 0.75) + 1)},
            "train": {"max_steps": args.steps, "batch_size": args.batch_size, "save_every": 0,
                      "distributed": "fsdp" if mode.startswith("fsdp") else "auto"}}


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def run_in_process(model: str, mode: str, args, out: Path) -> dict:
    import torch

    from codelora.config_parse import parse_config
    from codelora.experiments.run import RunOptions, run

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(parse_config(config_for(model, mode, args, out)), RunOptions(evaluate=False, overwrite=True))
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 1024 ** 3
    gc.collect()
    torch.cuda.empty_cache()
    return read_manifest(out) | {"peak_gpu_gb": [round(peak, 2)], "memory_source": "max_memory_allocated",
                                 "wall_seconds": round(wall, 1)}


class SmiSampler(threading.Thread):
    """Max nvidia-smi memory.used per GPU (GiB) while it runs, and what was in use before it started."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, {}, threading.Event()
        self.before = self.sample()

    @staticmethod
    def sample() -> dict[int, float]:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        used = {}
        for line in out.strip().splitlines():
            i, mib = (x.strip() for x in line.split(","))
            used[int(i)] = float(mib) / 1024  # MiB -> GiB
        return used

    def run(self) -> None:
        while not self.stop.is_set():
            for i, used in self.sample().items():
                self.peak[i] = max(self.peak.get(i, 0.0), used)
            self.stop.wait(self.period)


def run_torchrun(model: str, mode: str, args, out: Path) -> dict:
    n = gpu_count()
    cfg = config_for(model, mode, args, out)
    sets = [f"data.limit={cfg['data']['limit']}", "train.save_every=0", "train.distributed=fsdp"]
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(n), "-m", "codelora", "train", "--model", model,
           "--data", str(args.data), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--out", str(out), "--overwrite", *[x for s in sets for x in ("--set", s)],
           *(["--quantize", "4bit"] if cfg["model"]["quantize"] == "4bit" else [])]
    sampler = SmiSampler()
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                          env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    # above what was in use before (this process's own CUDA context and cache, on GPU 0)
    peaks = [round(sampler.peak[i] - sampler.before.get(i, 0.0), 2) for i in sorted(sampler.peak)] or None
    return read_manifest(out) | {"peak_gpu_gb": peaks, "memory_source": "nvidia-smi memory.used, max - before",
                                 "wall_seconds": round(wall, 1)}


def read_manifest(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    t = m["train"]
    return {"processes": m["processes"], "precision": m["precision"], "steps": t["steps"], "tokens": t["tokens"],
            "tokens_per_s": t["tokens_per_s"],
            "parameter_bytes_max": max(p["parameter_bytes"] for p in t.get("per_process", [{"parameter_bytes": 0}]))}


def main() -> None:
    args = parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing checked, exit code 2")
        sys.exit(2)
    if args.steps < 2:
        sys.exit("gpu_check: --steps must be at least 2 (the first step warms the learning rate up from 0)")
    if not args.data.is_file():
        sys.exit(f"gpu_check: data file not found: {args.data} (pass --data FILE with instruction/input/output)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n = gpu_count()
    names = [torch.cuda.get_device_name(i) for i in range(n)]
    print(f"GPUs: {n} x {', '.join(sorted(set(names)))}; torch {torch.__version__}, CUDA {torch.version.cuda}",
          flush=True)
    models, modes = args.models.split(","), args.modes.split(",")
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="codelora-gpu-check-") as tmp:
        tmp = Path(tmp)
        paths = {"embedded": ("smollm2-135m", "SmolLM2-135M (embedded)")}
        if "llama-1b" in models:
            t0 = time.perf_counter()
            path, params = build_llama_1b(tmp / "llama-1b")
            paths["llama-1b"] = (str(path), f"Llama 1B-class, random ({params / 1e9:.2f}B params)")
            print(f"built {paths['llama-1b'][1]} in {time.perf_counter() - t0:.0f} s", flush=True)
        for key in models:
            model, label = paths[key]
            for mode in modes:
                print(f"running {mode} on {label} ...", flush=True)
                out = tmp / f"run-{key}-{mode}"
                try:
                    r = (run_torchrun if mode.startswith("fsdp") else run_in_process)(model, mode, args, out)
                except Exception as e:  # noqa: BLE001 -- one failed cell does not hide the others
                    failures.append({"model": key, "mode": mode, "error": str(e)[-2000:]})
                    print(f"  FAILED: {str(e)[-500:]}", flush=True)
                    continue
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                results.append({"model": key, "label": label, "mode": mode} | r)
    print("\n| model | mode | processes | tokens/s | peak GPU memory (GiB, per GPU) | measured by | weights per process (GB) |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        peak = ", ".join(f"{x:.2f}" for x in r["peak_gpu_gb"]) if r["peak_gpu_gb"] else "n/a"
        print(f"| {r['label']} | {r['mode']} | {r['processes']} | {r['tokens_per_s']:.0f} | {peak} | "
              f"{r['memory_source']} | {r['parameter_bytes_max'] / 1e9:.2f} |")
    for f in failures:
        print(f"FAILED: {f['model']} {f['mode']}: {f['error'].splitlines()[-1] if f['error'] else ''}")
    summary = {"benchmark": "gpu_check", "gpus": names, "torch": torch.__version__, "steps": args.steps,
               "batch_size": args.batch_size, "results": results, "failures": failures}
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
