"""Generation latency of the served model: base, merged adapter, unmerged adapter; adapter switching.

    python benchmarks/serve_latency.py                 # ~6 min on 2 CPU cores, embedded SmolLM2-135M
    python benchmarks/serve_latency.py --adapter runs/demo --rounds 3

Everything goes through codelora's serving Engine (what `codelora serve` runs per request), one
prompt at a time, greedy, exactly `--new-tokens` tokens per request (min = max new tokens, so
every variant does the same work). Variants, each its own model instance in this process:
  base       the base model alone (no peft code at all)
  merged     the adapter merged by `codelora merge` (parity gate included), served as a plain model
  unmerged   base + the adapter attached by peft (LoRA matmuls on every forward)
  base/peft  the base through the same peft-wrapped model with adapters disabled
Requests are interleaved: for every prompt of every round all variants run back to back (their
order rotated each round), so the machine's drift hits them alike. The verdict uses paired
ratios: variant time / base time for the same prompt in the same round, median over all pairs
(memory-bandwidth noise on a shared VM moves single requests by +-30%, pairs much less).
Switching: time to activate another already-loaded adapter, first-load time of an adapter, and
the latency of requests that alternate adapters vs requests that stay on one.

Without --adapter, two adapters r=16 on q,k,v,o with random weights are made with peft (speed
does not depend on the values). Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "How do I read a CSV file with pandas and print the first five rows?",
    "Write a function that reverses the words in a sentence.",
    "Explain Python list comprehensions with an example.",
]


def make_adapter(model_name: str, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from codelora.config import ModelConfig
    from codelora.models.sources import load_base

    torch.manual_seed(seed)
    base, _, source = load_base(ModelConfig(name=model_name), "cpu")
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():  # small, so the model stays a model (values do not change the speed)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(0.01)
    model.peft_config["default"].base_model_name_or_path = source.name
    model.save_pretrained(out, save_embedding_layers=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", type=Path, help="an adapter (run directory) for the merged/unmerged variants")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--switches", type=int, default=200, help="adapter activations timed")
    args = p.parse_args()

    import torch

    from codelora.config import ModelConfig
    from codelora.models.merge import merge
    from codelora.serving.engine import Engine
    from codelora.serving.registry import AdapterRegistry

    torch.set_num_threads(torch.get_num_threads())
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    reg = tmp / "adapters"
    reg.mkdir()
    if args.adapter:
        (reg / "a").symlink_to(args.adapter.resolve())
    else:
        make_adapter(args.model, reg / "a", seed=1)
    make_adapter(args.model, reg / "b", seed=2)
    print("merging adapter a (with the parity gate) ...", flush=True)
    merge(reg / "a", tmp / "merged")

    base = Engine(ModelConfig(name=args.model), None, "cpu")
    merged = Engine(ModelConfig(name=str(tmp / "merged")), None, "cpu")
    served = Engine(ModelConfig(name=args.model), AdapterRegistry(reg), "cpu")
    load_s = {name: served.adapter(name).load_seconds for name in ("a", "b")}
    n = args.new_tokens
    variants = {
        "base": lambda ids: base.generate(ids, None, n, min_new_tokens=n),
        "merged": lambda ids: merged.generate(ids, None, n, min_new_tokens=n),
        "unmerged": lambda ids: served.generate(ids, "a", n, min_new_tokens=n),
        "base/peft": lambda ids: served.generate(ids, None, n, min_new_tokens=n),
    }
    prompts = [base.question_ids(q) for q in PROMPTS]
    for run in variants.values():  # warm-up: first calls allocate caches
        run(prompts[0])

    times: dict[str, list[float]] = {v: [] for v in variants}
    order = list(variants)
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} ...", flush=True)
        order = order[1:] + order[:1]
        for ids in prompts:
            for v in order:
                g = variants[v](ids)
                assert g.completion_tokens == n, (v, g.completion_tokens)
                times[v].append(g.seconds)

    # switching: activating an already-loaded adapter (what a request for another adapter costs)
    switch = []
    for i in range(args.switches):
        t0 = time.perf_counter()
        with served.activated("a" if i % 2 else "b"):
            pass
        switch.append(time.perf_counter() - t0)
    alternating, staying = [], []
    for i in range(2 * len(prompts)):
        ids = prompts[i % len(prompts)]
        alternating.append(served.generate(ids, "ab"[i % 2], n, min_new_tokens=n).seconds)
        staying.append(served.generate(ids, "a", n, min_new_tokens=n).seconds)

    med = {v: statistics.median(t) for v, t in times.items()}
    paired = {v: statistics.median(a / b for a, b in zip(times[v], times["base"])) for v in variants}
    print(f"\n{n} new tokens per request, greedy, one prompt at a time; {args.rounds} rounds x {len(prompts)} prompts")
    print(f"{'variant':<10} {'median s':>9} {'tokens/s':>9} {'paired vs base':>15} {'min s':>7} {'max s':>7}")
    for v in variants:
        print(f"{v:<10} {med[v]:>9.3f} {n / med[v]:>9.2f} {paired[v]:>14.3f}x {min(times[v]):>7.3f} "
              f"{max(times[v]):>7.3f}")
    switch_us = statistics.median(switch) * 1e6
    print(f"\nadapter switch (already loaded): median {switch_us:.0f} us; first load: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in load_s.items()))
    print(f"requests alternating adapters a/b: median {statistics.median(alternating):.3f} s; "
          f"staying on a: {statistics.median(staying):.3f} s")
    verdict = "PASS" if paired["merged"] <= 1.03 else "FAIL"
    print(f"merged vs base latency (median paired ratio): {paired['merged']:.3f}x (target <= 1.03): {verdict}")
    result = {
        "benchmark": "serve_latency", "model": args.model, "new_tokens": n, "rounds": args.rounds,
        "requests_per_variant": len(times["base"]),
        "median_s": {v: round(m, 4) for v, m in med.items()},
        "tokens_per_s": {v: round(n / m, 2) for v, m in med.items()},
        "merged_vs_base": round(paired["merged"], 4), "unmerged_vs_base": round(paired["unmerged"], 4),
        "base_peft_vs_base": round(paired["base/peft"], 4),
        "switch_us_median": round(switch_us, 1), "adapter_load_s": {k: round(v, 3) for k, v in load_s.items()},
        "alternating_s_median": round(statistics.median(alternating), 4),
        "staying_s_median": round(statistics.median(staying), 4),
        "merged_within_3pct": verdict == "PASS", "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
