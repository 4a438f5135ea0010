"""Training over several processes: weights held per process, peak RSS and tokens/s, fsdp vs ddp.

    python benchmarks/scale.py                        # ~4 min on 2 CPU cores (make bench-scale)
    python benchmarks/scale.py --processes 1,2 --steps 2 --json-out scale.json

Every configuration is its own real run of the CLI, as users start it:

    torchrun --standalone --nproc_per_node N -m codelora train --model smollm2-135m --data HEAD
        --max-steps 4 --batch-size 4 --set data.limit=L --set train.save_every=0
        --set train.precision=fp32 --set train.distributed=fsdp|ddp --out TMP

fsdp at each of --processes, ddp at each of them above 1; the 1-process run (fsdp: one process,
nothing to shard, the whole model, as ddp's) is the baseline of both. fp32 everywhere so the rows
compare (under fsdp codelora stores every weight in fp32 anyway). Each process trains batch-size
rows per optimizer step (a step takes batch x processes rows), so tokens/s is the whole job's;
data.limit is raised where needed so every step of the largest run is full.

Threads: OMP_NUM_THREADS = ceil(cores / N) per process, so each configuration uses every core once
(2 cores: 2 threads at 1 process, 1 at 2); where N > cores the processes share cores
(oversubscribed), which the output says: throughput there measures contention, not scaling.

From RUN_DIR/manifest.json: train.per_process[*].parameter_bytes (the weights a process holds: its
shards under fsdp) and peak_rss_gb, max over ranks, and train.tokens_per_s. The set-up column is
what rank 0 logs right after sharding ("this process holds X MB of weights").
Targets (PASS/FAIL): fsdp at 2 processes holds <= 0.55 of one process's weight bytes, at 4 <= 0.3.

Prints the CPU, a markdown table, the targets and one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import cpu_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO.parent / "shared" / "data" / "python-codes-25k.head356.jsonl"
TARGETS = {2: 0.55, 4: 0.3}  # fsdp: max parameter bytes per process / one process's
TORCHRUN = Path(sys.executable).with_name("torchrun")
SETUP_LINE = re.compile(r"this process holds ([\d,.]+) MB of weights")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    p.add_argument("--processes", default="1,2,4", help="process counts, comma-separated (1 = the baseline)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per micro-batch (per process)")
    p.add_argument("--data", type=Path, default=HEAD)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, help="data.limit (default: 64, or more so that every step is full)")
    p.add_argument("--json-out", type=Path, help="also write the JSON result to this file")
    return p.parse_args()


def threads_for(n: int, cores: int) -> int:
    return max(1, math.ceil(cores / n))


def run_one(args, mode: str, n: int, limit: int, cores: int, tmp: Path) -> dict:
    out = tmp / f"{mode}-{n}"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(n), "-m", "codelora", "train",
           "--model", args.model, "--data", str(args.data), "--max-steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--set", f"data.limit={limit}", "--set", "train.save_every=0",
           "--set", "train.precision=fp32", "--set", f"train.distributed={mode}", "--out", str(out)]
    threads = threads_for(n, cores)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "manifest.json").is_file():
        sys.exit(f"scale: the {mode} run on {n} processes failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "manifest.json").read_text())
    per = m["train"]["per_process"]
    assert len(per) == n == m["processes"], (len(per), n, m["processes"])
    setup = SETUP_LINE.search(proc.stderr)  # rank 0's log line (only fsdp logs it)
    return {"mode": mode, "processes": n, "threads_per_process": threads, "oversubscribed": n * threads > cores,
            "parameter_bytes_max": max(p["parameter_bytes"] for p in per),
            "parameter_bytes": [p["parameter_bytes"] for p in per],
            "setup_mb_rank0": float(setup.group(1).replace(",", "")) if setup else None,
            "peak_rss_gb_max": max(p["peak_rss_gb"] for p in per),
            "peak_rss_gb_sum": round(sum(p["peak_rss_gb"] for p in per), 3),
            "tokens": m["train"]["tokens"], "train_seconds": m["train"]["train_seconds"],
            "tokens_per_s": m["train"]["tokens_per_s"], "wall_seconds": round(wall, 1),
            "distributed": m["distributed"]}


def main() -> None:
    args = parse_args()
    if args.steps < 2:  # the first step warms the learning rate up from 0: a 1-step adapter is all zero, refused
        sys.exit("scale: --steps must be at least 2")
    if not args.data.is_file():
        sys.exit(f"scale: data file not found: {args.data} (pass --data FILE with instruction/input/output)")
    counts = sorted({int(x) for x in args.processes.split(",")})
    if 1 not in counts:
        counts.insert(0, 1)  # the baseline every ratio is against
    # the train split is ~81% of data.limit; every step of the largest run takes batch x N rows
    limit = args.limit or max(64, math.ceil(args.steps * args.batch_size * max(counts) / 0.75))
    cores = len(os.sched_getaffinity(0))
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cores} cores, torch capability {cpu['capability']}, flags {cpu['flags']}",
          flush=True)
    print(f"each run: torchrun --standalone --nproc_per_node N -m codelora train --model {args.model} "
          f"--data {args.data.name} --max-steps {args.steps} --batch-size {args.batch_size} --set data.limit={limit} "
          f"--set train.save_every=0 --set train.precision=fp32 --set train.distributed=fsdp|ddp; "
          f"OMP_NUM_THREADS=ceil({cores}/N)", flush=True)
    configs = [("fsdp", n) for n in counts] + [("ddp", n) for n in counts if n > 1]
    results = []
    with tempfile.TemporaryDirectory(prefix="codelora-scale-") as tmp:
        for mode, n in configs:
            print(f"running {mode} on {n} process{'es' if n > 1 else ''} "
                  f"({threads_for(n, cores)} thread{'s' if threads_for(n, cores) > 1 else ''} each) ...", flush=True)
            results.append(run_one(args, mode, n, limit, cores, Path(tmp)))
    base = next(r for r in results if r["processes"] == 1)
    for r in results:
        r["parameter_ratio"] = round(r["parameter_bytes_max"] / base["parameter_bytes_max"], 3)
        r["tokens_per_s_ratio"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)

    print("\n| run | processes x threads | weights per process, max (MB) | ratio to 1 process "
          "| rank 0 at set-up (MB) | peak RSS per process, max (GB) | peak RSS, all processes (GB) "
          "| tokens/s | vs 1 process |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        name = "1 process (baseline)" if r["processes"] == 1 else r["mode"]
        setup = f"{r['setup_mb_rank0']:,.1f}" if r["setup_mb_rank0"] is not None else "-"
        print(f"| {name} | {r['processes']} x {r['threads_per_process']}{' (oversubscribed)' if r['oversubscribed'] else ''} "
              f"| {r['parameter_bytes_max'] / 1e6:,.1f} | {r['parameter_ratio']:.2f} | {setup} "
              f"| {r['peak_rss_gb_max']:.2f} | {r['peak_rss_gb_sum']:.2f} | {r['tokens_per_s']:.0f} "
              f"| {r['tokens_per_s_ratio']:.2f}x |")
    over = sorted({r["processes"] for r in results if r["oversubscribed"]})
    if over:
        print(f"\nnote: {', '.join(map(str, over))} processes on {cores} cores are oversubscribed (more threads than "
              f"cores): their tokens/s measures contention for the cores, not how the job scales.")
    grew = [r for r in results if r["setup_mb_rank0"] and r["parameter_bytes_max"] / 1e6 > r["setup_mb_rank0"] + 1]
    if grew:
        print("note: under fsdp the manifest's parameter_bytes (taken at the end of the run) exceed what rank 0 held "
              "right after sharding: FSDP2 leaves the root unit (embeddings, norm, tied head) gathered after a "
              "forward without backward (the final validation) until the next forward/backward or reshard().")

    targets = []
    for n, limit_ratio in TARGETS.items():
        r = next((r for r in results if r["mode"] == "fsdp" and r["processes"] == n), None)
        if r is not None:
            ok = r["parameter_ratio"] <= limit_ratio
            targets.append({"target": f"fsdp at {n} processes: weights per process <= {limit_ratio} of one process's",
                            "value": r["parameter_ratio"], "pass": ok})
            at_setup = (f" (rank 0 right after sharding: {r['setup_mb_rank0'] * 1e6 / base['parameter_bytes_max']:.3f})"
                        if r["setup_mb_rank0"] and base["parameter_bytes_max"] else "")
            print(f"target: fsdp at {n} processes: weights per process <= {limit_ratio} of one process's: "
                  f"{r['parameter_ratio']:.3f} {'PASS' if ok else 'FAIL'}{at_setup}")
    out = {"benchmark": "scale", "cpu": cpu, "cores": cores, "model": args.model, "steps": args.steps,
           "batch_size": args.batch_size, "data_limit": limit, "precision": "fp32", "results": results,
           "targets": targets}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
