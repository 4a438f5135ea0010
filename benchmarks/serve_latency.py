"""Generation latency of the served model: base, merged adapter, unmerged adapter; adapter switching.

    python benchmarks/serve_latency.py                 # ~10 min on 2 CPU cores, embedded SmolLM2-135M
    python benchmarks/serve_latency.py --adapter runs/demo --rounds 4

Real `codelora serve` processes, real HTTP, one request at a time, greedy, exactly
`--new-tokens` tokens per request (`min_new_tokens` = `max_new_tokens`, so every variant does
the same work). Three servers, each loading its model the same way in its own process:
  base       `serve --model BASE`: the base model alone (no peft code at all)
  merged     `serve --model MERGED`: the adapter merged by `codelora merge` (parity gate included)
  adapters   `serve --adapters DIR`: base + adapters a and b attached by peft; requests for
             a are the "unmerged" variant, requests without an adapter "base/peft"
Only one server computes at a time (the others wait on their sockets). Requests are
interleaved: for every prompt of every round all variants run back to back, their order
rotated each round, so the machine's drift hits them alike. The verdict uses paired ratios:
variant time / base time for the same prompt in the same round, median over all pairs.
Switching: requests that alternate a/b vs requests that stay on a, and the first-load time of
an adapter (from /v1/adapters).

Without --adapter, two adapters r=16 on q,k,v,o with small random weights are made with peft
(speed does not depend on the values). Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def start_server(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "codelora", "serve", *args, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            sys.exit(f"serve_latency: server {args} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"serve_latency: server {args} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)


def call(url: str, path: str, body: dict | None = None) -> tuple[dict, float]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        reply = json.loads(r.read())
    return reply, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", type=Path, help="an adapter (run directory) for the merged/unmerged variants")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()

    from codelora.export.merge import merge

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    reg = tmp / "adapters"
    reg.mkdir()
    if args.adapter:
        # a copy: the server refuses symlinks that lead out of its adapter directory
        shutil.copytree(args.adapter.resolve(), reg / "a", ignore=shutil.ignore_patterns("checkpoint*", "*.png"))
    else:
        make_adapter(args.model, reg / "a", seed=1)
    make_adapter(args.model, reg / "b", seed=2)
    print("merging adapter a (with the parity gate) ...", flush=True)
    merge(reg / "a", tmp / "merged")

    servers = {}
    try:
        for name, serve_args in (("base", ["--model", args.model]), ("merged", ["--model", str(tmp / "merged")]),
                                 ("adapters", ["--model", args.model, "--adapters", str(reg)])):
            servers[name] = start_server(serve_args, tmp / f"{name}.log")
        n = args.new_tokens
        req = {"max_new_tokens": n, "min_new_tokens": n}
        variants = {  # variant -> (server, extra request fields)
            "base": ("base", {}), "merged": ("merged", {}),
            "unmerged": ("adapters", {"adapter": "a"}), "base/peft": ("adapters", {}),
        }

        def run(variant: str, prompt: str) -> tuple[float, float]:
            server, extra = variants[variant]
            reply, wall = call(servers[server][1], "/v1/generate", {"prompt": prompt, **req, **extra})
            assert reply["usage"]["completion_tokens"] == n, reply
            return wall, reply["seconds"]

        for v in variants:  # warm-up: first calls allocate caches
            run(v, PROMPTS[0])
        wall: dict[str, list[float]] = {v: [] for v in variants}
        gen: dict[str, list[float]] = {v: [] for v in variants}
        order = list(variants)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", flush=True)
            order = order[1:] + order[:1]
            for prompt in PROMPTS:
                for v in order:
                    w, g = run(v, prompt)
                    wall[v].append(w)
                    gen[v].append(g)

        adapters_url = servers["adapters"][1]
        alternating, staying = [], []
        for i in range(2 * len(PROMPTS)):
            prompt = PROMPTS[i % len(PROMPTS)]
            alternating.append(call(adapters_url, "/v1/generate", {"prompt": prompt, **req, "adapter": "ab"[i % 2]})[1])
            staying.append(call(adapters_url, "/v1/generate", {"prompt": prompt, **req, "adapter": "a"})[1])
        listing = call(adapters_url, "/v1/adapters")[0]["adapters"]
        load_s = {a["name"]: a.get("load_seconds") for a in listing}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)

    med = {v: statistics.median(t) for v, t in wall.items()}
    paired = {v: statistics.median(a / b for a, b in zip(wall[v], wall["base"])) for v in variants}
    print(f"\n{n} new tokens per request, greedy, one request at a time over HTTP; "
          f"{args.rounds} rounds x {len(PROMPTS)} prompts")
    print(f"{'variant':<10} {'median s':>9} {'tokens/s':>9} {'paired vs base':>15} {'min s':>7} {'max s':>7} "
          f"{'server s':>9}")
    for v in variants:
        print(f"{v:<10} {med[v]:>9.3f} {n / med[v]:>9.2f} {paired[v]:>14.3f}x {min(wall[v]):>7.3f} "
              f"{max(wall[v]):>7.3f} {statistics.median(gen[v]):>9.3f}")
    alt, stay = statistics.median(alternating), statistics.median(staying)
    print(f"\nrequests alternating adapters a/b: median {alt:.3f} s; staying on a: {stay:.3f} s "
          f"(switch cost {1000 * (alt - stay):+.0f} ms); first load: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in load_s.items() if v is not None))
    verdict = "PASS" if paired["merged"] <= 1.03 else "FAIL"
    print(f"merged vs base latency (median paired ratio): {paired['merged']:.3f}x (target <= 1.03): {verdict}")
    result = {
        "benchmark": "serve_latency", "model": args.model, "new_tokens": n, "rounds": args.rounds,
        "requests_per_variant": len(wall["base"]),
        "median_s": {v: round(m, 4) for v, m in med.items()},
        "tokens_per_s": {v: round(n / m, 2) for v, m in med.items()},
        "merged_vs_base": round(paired["merged"], 4), "unmerged_vs_base": round(paired["unmerged"], 4),
        "base_peft_vs_base": round(paired["base/peft"], 4),
        "alternating_s_median": round(alt, 4), "staying_s_median": round(stay, 4),
        "adapter_load_s": load_s, "merged_within_3pct": verdict == "PASS",
    }
    print(json.dumps(result))
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
