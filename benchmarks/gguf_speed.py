"""One answer at a time: an exported GGUF file in llama.cpp vs the same adapter behind `codelora serve`.

    python benchmarks/gguf_speed.py --adapter runs/demo          # ~5 min on 2 cores (make bench-gguf)
    python benchmarks/gguf_speed.py --adapter runs/demo --quant q4_k_m --max-tokens 64 --repeats 2

Without --adapter a random LoRA (r16 on q,k,v,o) on the embedded model stands in: the speed does
not depend on the adapter's values. The adapter is exported once (`codelora export --quant
f16,q8_0,q4_k_m`, timed), then for every question and every engine: one greedy answer of exactly
--max-tokens tokens (`min_tokens` on the server, min_new_tokens in llama.cpp), the same chat
prompt, single stream. The server is one real `codelora serve` process (PyTorch, fp32, the
adapter unmerged as users serve it), asked over real HTTP with streaming; llama.cpp runs in this
process through codelora's GgufModel with all cores. tokens/s = tokens / wall time of the answer,
prefill included (what a user waits for). Engines are interleaved within each repeat and the
speedups are paired per repeat (this VM drifts by 20-30% between minutes); the table shows medians.

Prints the CPU, a markdown table, the issue's target (q4_k_m >= 2x serve: PASS/FAIL) and one
JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import make_adapter  # noqa: E402
from serve_load import QUESTIONS, copy_adapter, cpu_info, start_server, stop_server, stream_chat  # noqa: E402

TARGET = 2.0  # q4_k_m single-stream tokens/s over codelora serve's


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", help="adapter run directory (default: a random LoRA on the embedded model)")
    p.add_argument("--quant", default="f16,q8_0,q4_k_m", help="GGUF files to compare (comma-separated)")
    p.add_argument("--questions", type=int, default=4, help="questions per repeat")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (exactly)")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def export(adapter: Path, out: Path, quant: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "codelora", "export", str(adapter), "--out", str(out), "--quant", quant],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"gguf_speed: export failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def llama_cpp_answer(model, fmt, question: str, n: int) -> tuple[int, float]:
    from codelora.config import GenerateConfig
    from codelora.decoding.batcher import Sequence

    seq = Sequence(fmt.prompt_ids(question), GenerateConfig(max_new_tokens=n, temperature=0.0), min_new_tokens=n)
    t0 = time.perf_counter()
    model.run([seq], fmt.stop_ids)
    return len(seq.tokens), time.perf_counter() - t0


def main() -> int:
    args = parse_args()
    from codelora.data.prompts import PromptFormat
    from codelora.decoding.gguf_model import GgufModel, context_for, gguf_tokenizer

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, torch capability {cpu['capability']}, flags {cpu['flags']}",
          flush=True)
    quants = args.quant.split(",")
    questions = QUESTIONS[: args.questions]
    with tempfile.TemporaryDirectory(prefix="gguf_speed-") as tmp_s:
        tmp = Path(tmp_s)
        adapter = Path(args.adapter) if args.adapter else make_adapter("smollm2-135m", tmp / "random-adapter", 0)
        export_s = export(adapter, tmp / "gguf", ",".join(quants))
        print(f"export ({args.quant}): {export_s:.1f} s", flush=True)
        copy_adapter(adapter, tmp / "adapters" / "demo")
        fmt = PromptFormat(gguf_tokenizer(tmp / "gguf" / f"model-{quants[0]}.gguf"))
        n_ctx = context_for(max(len(fmt.prompt_ids(q)) for q in questions) + args.max_tokens)
        models = {q: GgufModel(tmp / "gguf" / f"model-{q}.gguf", n_ctx=n_ctx, tokenizer=fmt.tok) for q in quants}
        server = None
        try:
            server, url, _ = start_server(argparse.Namespace(port=0, model=None, max_batch=None), tmp)
            rates: dict[str, list[float]] = {"serve": [], **{q: [] for q in quants}}
            with httpx.Client(timeout=600) as client:
                stream_chat(client, url, "demo", questions[0], 8)  # warm-up
                for m in models.values():
                    llama_cpp_answer(m, fmt, questions[0], 8)
                for rep in range(args.repeats):
                    for q in questions:
                        r = stream_chat(client, url, "demo", q, args.max_tokens)
                        if r["error"] or r["tokens"] != args.max_tokens:
                            sys.exit(f"gguf_speed: the server answered {r['tokens']} tokens: {r['error']}")
                        rates["serve"].append(r["tokens"] / r["latency"])
                        for name, m in models.items():
                            n, s = llama_cpp_answer(m, fmt, q, args.max_tokens)
                            rates[name].append(n / s)
                    print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
        finally:
            stop_server(server)
            for m in models.values():
                m.close()
    report(args, cpu, rates, export_s)
    return 0


def report(args, cpu: dict, rates: dict[str, list[float]], export_s: float) -> None:
    serve = rates["serve"]
    rows = {}
    for name, values in rates.items():
        paired = [v / s for v, s in zip(values, serve)]  # same question, same repeat
        rows[name] = {"tokens_per_s": round(statistics.median(values), 1), "min": round(min(values), 1),
                      "max": round(max(values), 1), "speedup_vs_serve": round(statistics.median(paired), 2)}
    print(f"\n| engine | tokens/s (median) | range | speedup vs serve (paired median) |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        label = "codelora serve (PyTorch fp32, adapter)" if name == "serve" else f"llama.cpp {name} GGUF"
        print(f"| {label} | {r['tokens_per_s']} | {r['min']}-{r['max']} | {r['speedup_vs_serve']}x |")
    q4 = rows.get("q4_k_m", {}).get("speedup_vs_serve")
    if q4 is not None:
        print(f"\ntarget: q4_k_m >= {TARGET}x codelora serve single-stream: {q4}x "
              f"{'PASS' if q4 >= TARGET else 'FAIL'}")
    print(json.dumps({"benchmark": "gguf_speed", "cpu": cpu, "threads": os.cpu_count(), "answers": len(serve),
                      "max_tokens": args.max_tokens, "export_seconds": round(export_s, 1), "engines": rows}))


if __name__ == "__main__":
    sys.exit(main())
