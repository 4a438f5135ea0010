"""Load on `codelora serve`: C concurrent streaming chat clients, base and adapter mixed (continuous batching).

    python benchmarks/serve_load.py --adapter runs/demo                  # ~5 min: embedded model, 1,4,8,16 clients
    python benchmarks/serve_load.py --adapter runs/demo --clients 1,8 --max-tokens 32 --out load.json

One real `codelora serve` process for the whole run (its adapters directory is a temporary
folder holding a copy of --adapter as "demo": the registry refuses symlinks that lead outside
it), real HTTP. After one warm-up request per model, for each client count C: C threads send
one streaming `POST /v1/chat/completions` each at the same moment (a barrier); client i asks
the adapter when i is odd, else "base"; every client a different Python question; greedy,
max_tokens = min_tokens = --max-tokens (vLLM's `min_tokens` extension: every request makes
exactly that many tokens, the same work whatever the model would say). tokens/s counts the
completion tokens from each stream's usage chunk: sum of tokens / round wall time (first send
to last finish). TTFT is the time to the first chunk with non-empty content. After each round
/health must show nothing running, queued or admitted. Each client count runs --repeats rounds
(5), interleaved with the other counts; the table shows the median round by tokens/s and the
statuses of all rounds. The speedup over 1 client is paired: the median over repeats of (C-client
tokens/s / 1-client tokens/s of the same repeat), so the machine's drift between repeats (this
2-core VM moves by 30%) cancels out.

Prints the CPU, a markdown table, the issue's targets (PASS/FAIL; the exit status is 0 either
way), then one JSON line (the last line). Exit status 1 only when the server itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from codelora.io.rundir import ADAPTER_FILES, CONFIG, MANIFEST, RunDir

QUESTIONS = [
    "Write a Python function that checks whether a number is prime.",
    "How do I read a CSV file with pandas and print the first five rows?",
    "Write a function that reverses the words in a sentence.",
    "Explain Python list comprehensions with an example.",
    "Write a function that merges two sorted lists into one sorted list.",
    "How do I count how often each word occurs in a text file?",
    "Write a class for a stack with push, pop and peek methods.",
    "How do I remove duplicates from a list while keeping the order?",
    "Write a function that returns the n-th Fibonacci number iteratively.",
    "How do I parse a JSON string into a dictionary and read a nested key?",
    "Write a function that checks whether a string is a palindrome, ignoring case.",
    "How do I sort a list of dictionaries by the value of one key?",
    "Write a decorator that prints how long a function takes to run.",
    "How do I list all .py files in a folder and its subfolders?",
    "Write a function that flattens a nested list of integers.",
    "How do I send a GET request with the requests library and check the status code?",
]
ADAPTER = "demo"
# The files the server reads from an adapter folder: weights and config, and the run's
# config.yaml / manifest.json, which name the base model it was trained on.
COPIED_FILES = (*ADAPTER_FILES, CONFIG, MANIFEST)


class ServerFailed(Exception):
    """The server did not start, died, or stopped answering: the benchmark cannot go on."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", type=Path, required=True, help="an adapter folder (a codelora run directory)")
    p.add_argument("--model", help="base model passed to serve (default: the adapter's base)")
    p.add_argument("--clients", default="1,4,8,16", help="comma-separated client counts, one round each")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds per client count, interleaved (1,4,8,16,1,4,...); the median round is reported")
    p.add_argument("--max-batch", type=int, help="passed to serve (default: the server's default)")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--out", type=Path, help="also write the JSON summary to this file")
    args = p.parse_args()
    try:
        args.clients = list(dict.fromkeys(int(c) for c in args.clients.split(",") if c.strip()))  # once each
    except ValueError:
        p.error(f"--clients: comma-separated integers, not {args.clients!r}")
    if not args.clients or min(args.clients) < 1:
        p.error("--clients: at least one count, each >= 1")
    return args


def cpu_info() -> dict:
    """This machine's CPU: what torch dispatches to, and the model name and flags from lscpu."""
    import torch  # only for the capability; the client itself needs no torch

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "unknown"), "capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(),
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]}


def check_adapter(src: Path) -> None:
    if not RunDir(src).has_adapter():
        sys.exit(f"serve_load: {src} is not an adapter folder (needs adapter_config.json and "
                 f"adapter_model.safetensors); pass a run directory of codelora train")


def copy_adapter(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def free_port(port: int = 0) -> int:
    """A free port (0: any). A busy --port is refused up front: another server there would
    answer /health before ours failed to bind, and the benchmark would measure it instead."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ServerFailed(f"port {port} is not free ({e}); pass another --port or none") from None
        return s.getsockname()[1]


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start_server(args, tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port(args.port or 0)
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "codelora", "serve", "--adapters", str(tmp / "adapters"), "--port", str(port)]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--max-batch", str(args.max_batch)] if args.max_batch else []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # the first start of the embedded model converts it (~25 s, more when busy)
    while True:
        if proc.poll() is not None:
            raise ServerFailed(f"the server exited with status {proc.returncode} while starting (log {log})")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerFailed(f"the server did not answer /health within 600 s (log {log})")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stream_chat(client: httpx.Client, url: str, model: str, question: str, max_tokens: int) -> dict:
    """One streaming chat request, timed: status, TTFT, latency, completion tokens, whether [DONE] came."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    r = {"model": model, "status": None, "ttft": None, "latency": None, "tokens": 0, "done": False,
         "stream_error": False, "error": None, "start": time.perf_counter()}
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            r["status"] = resp.status_code
            if resp.status_code >= 300:
                r["error"] = f"HTTP {resp.status_code}: {resp.read().decode(errors='replace')[:200]}"
            else:
                _read_sse(resp, r)
    except (httpx.HTTPError, OSError, ValueError) as e:
        r["error"] = f"{type(e).__name__}: {e}"
    r["end"] = time.perf_counter()
    r["latency"] = r["end"] - r["start"]
    return r


def _read_sse(resp: httpx.Response, r: dict) -> None:
    for line in resp.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            r["done"] = True
            break
        chunk = json.loads(data)
        if "error" in chunk:  # the server failed mid-stream: the status was already 200
            r["stream_error"], r["error"] = True, f"in-stream error: {json.dumps(chunk)[:200]}"
            continue
        choices = chunk.get("choices") or []
        if r["ttft"] is None and choices and (choices[0].get("delta") or {}).get("content"):
            r["ttft"] = time.perf_counter() - r["start"]
        if chunk.get("usage"):
            r["tokens"] = chunk["usage"]["completion_tokens"]


def run_round(url: str, clients: int, max_tokens: int) -> list[dict]:
    """`clients` threads, each one request, all released together by a barrier."""
    results: list[dict | None] = [None] * clients
    barrier = threading.Barrier(clients)
    timeout = httpx.Timeout(connect=30, read=600, write=30, pool=30)

    def client(i: int) -> None:
        model = ADAPTER if i % 2 else "base"
        with httpx.Client(timeout=timeout) as http:  # one connection per client, like separate users
            barrier.wait()
            results[i] = stream_chat(http, url, model, QUESTIONS[i % len(QUESTIONS)], max_tokens)

    # daemon threads: Ctrl-C must not wait for streams that are still running
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def health(url: str) -> dict:
    try:
        return httpx.get(url + "/health", timeout=10).json()
    except (httpx.HTTPError, ValueError) as e:
        raise ServerFailed(f"/health did not answer: {e}") from e


def settle(url: str, seconds: float = 10) -> dict:
    """/health after a round: running, queued and admitted must drop to 0. The stream's end
    (its place given back when the event generator's `async with` ends) may lag the client's
    [DONE] a little, so poll for a few seconds; left_behind=True if it never drops."""
    t0 = time.monotonic()
    while True:
        h = health(url)
        state = {"running": h["running"], "queued": h["queued"], "admitted": h["queue"]["admitted"],
                 "completed": h["completed"], "refused": h["queue"]["refused"]}
        idle = state["running"] == state["queued"] == state["admitted"] == 0
        if idle or time.monotonic() - t0 > seconds:
            return state | {"left_behind": not idle, "settle_s": round(time.monotonic() - t0, 2)}
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(results: list[dict], clients: int) -> dict:
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    ok = [r for r in results if r["status"] and 200 <= r["status"] < 300]
    lost = [r for r in results if r["status"] is None or (200 <= r["status"] < 300 and not r["done"])]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok if r["done"]]

    def r4(x):
        return None if x is None else round(x, 4)

    return {"clients": clients, "wall_s": r4(wall), "tokens": tokens, "tokens_per_s": r4(tokens / wall),
            "ttft_p50": r4(percentile(ttft, 0.5)), "ttft_p95": r4(percentile(ttft, 0.95)),
            "latency_p50": r4(percentile(lat, 0.5)), "latency_p95": r4(percentile(lat, 0.95)),
            "2xx": len(ok), "4xx": sum(1 for r in results if r["status"] and 400 <= r["status"] < 500),
            "5xx": sum(1 for r in results if r["status"] and r["status"] >= 500),
            "stream_errors": sum(r["stream_error"] for r in results), "lost": len(lost),
            "no_content": len(ok) - len(ttft),
            "tokens_by_model": {m: sum(r["tokens"] for r in results if r["model"] == m) for m in ("base", ADAPTER)},
            "errors": [r["error"] for r in results if r["error"]][:5]}


def median_round(runs: list[dict]) -> dict:
    """The round with the median tokens/s (its timings), with statuses counted over every round."""
    s = dict(sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2])
    s["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
    for key in ("2xx", "4xx", "5xx", "stream_errors", "lost", "no_content"):
        s[key] = sum(r[key] for r in runs)
    s["health_after"] = next((r["health_after"] for r in runs if r["health_after"]["left_behind"]),
                             runs[-1]["health_after"])
    return s


def warm_up(url: str, max_tokens: int) -> None:
    """One request per model, so the rounds do not pay first-call costs; any failure is fatal."""
    with httpx.Client(timeout=httpx.Timeout(connect=30, read=600, write=30, pool=30)) as http:
        for model in ("base", ADAPTER):
            r = stream_chat(http, url, model, QUESTIONS[0], max_tokens)
            if r["error"] or not r["done"]:
                raise ServerFailed(f"warm-up request for model {model!r} failed: {r['error'] or 'no [DONE]'}")


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rounds: dict[int, dict]) -> None:
    print("\n| clients | tokens/s | speedup vs 1 client (paired) | p50 TTFT s | p95 TTFT s | p50 latency s "
          "| p95 latency s | statuses |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for c, s in rounds.items():
        speed = s.get("speedup")
        statuses = f"2xx {s['2xx']}, 4xx {s['4xx']}, 5xx {s['5xx']}, lost {s['lost']}"
        statuses += f", stream errors {s['stream_errors']}" if s["stream_errors"] else ""
        statuses += ", LEFT BEHIND" if s["health_after"]["left_behind"] else ""
        print(f"| {c} | {fmt(s['tokens_per_s'], '.1f')} | {fmt(speed)}x | {fmt(s['ttft_p50'])} | "
              f"{fmt(s['ttft_p95'])} | {fmt(s['latency_p50'])} | {fmt(s['latency_p95'])} | {statuses} |")


def check_targets(rounds: dict[int, dict]) -> dict:
    """The issue's targets; a target whose round was not run is None (not measured)."""
    one, eight = rounds.get(1), rounds.get(8)
    speedup = eight.get("speedup") if one and eight else None
    five = sum(s["5xx"] + s["stream_errors"] for s in rounds.values())
    lost = sum(s["lost"] + s["health_after"]["left_behind"] for s in rounds.values())
    targets = {
        "tokens/s with 8 clients >= 4x 1 client": None if speedup is None else speedup >= 4,
        "p50 TTFT with 8 clients <= 2 s": None if not eight or eight["ttft_p50"] is None else eight["ttft_p50"] <= 2,
        "zero 5xx (HTTP or in-stream)": five == 0,
        "nothing lost or left behind": lost == 0,
    }
    print("\ntargets:")
    detail = {"tokens/s with 8 clients >= 4x 1 client": f"{fmt(speedup)}x",
              "p50 TTFT with 8 clients <= 2 s": f"{fmt(eight and eight['ttft_p50'])} s",
              "zero 5xx (HTTP or in-stream)": f"{five}", "nothing lost or left behind": f"{lost}"}
    for name, ok in targets.items():
        print(f"  {'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {detail[name]}")
    return {"targets": targets, "speedup_8": None if speedup is None else round(speedup, 3), "5xx": five,
            "lost": lost}


def benchmark(args, tmp: Path) -> dict:
    proc = None
    try:
        proc, url, log = start_server(args, tmp)
        h = health(url)
        print(f"server: base {h['base_model']} on {h['device']}, max_batch {h['queue']['max_batch']}, "
              f"queue limit {h['queue']['limit']}; log {log}", flush=True)
        warm_up(url, args.max_tokens)
        runs: dict[int, list[dict]] = {c: [] for c in args.clients}
        for rep in range(args.repeats):  # interleaved, so the machine's drift hits every client count alike
            for c in args.clients:
                print(f"round {rep + 1}/{args.repeats}: {c} client(s) ...", flush=True)
                s = summarize(run_round(url, c, args.max_tokens), c)
                if proc.poll() is not None:
                    raise ServerFailed(f"the server exited with status {proc.returncode} during the {c}-client round")
                s["health_after"] = settle(url)
                runs[c].append(s)
        rounds = {c: median_round(r) for c, r in runs.items()}
        if 1 in runs:  # paired: each repeat's C-client tokens/s over the 1-client figure of the same repeat
            for c, s in rounds.items():
                s["speedup"] = statistics.median(r["tokens_per_s"] / one["tokens_per_s"]
                                                 for r, one in zip(runs[c], runs[1]))
        return {"rounds": rounds, "server": h}
    except ServerFailed as e:
        raise ServerFailed(f"{e}\n--- server log (tail) ---\n{log_tail(tmp / 'serve.log')}") from None
    finally:
        stop_server(proc)


def main() -> int:
    args = parse_args()
    check_adapter(args.adapter)
    # a plain `kill` of the benchmark must stop the server too, like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, torch capability {cpu['capability']}, "
          f"flags {' '.join(cpu['flags']) or 'none of avx2/avx512f/amx'}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    failed = False
    try:
        copy_adapter(args.adapter, tmp / "adapters" / ADAPTER)
        run = benchmark(args, tmp)
    except ServerFailed as e:
        failed = (tmp / "serve.log").is_file()  # the folder with the server's log is kept for a look
        print(f"serve_load: SERVER FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("serve_load: interrupted; server stopped", file=sys.stderr)
        return 130
    finally:
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, cpu, run)
    return 0


def report(args, cpu: dict, run: dict) -> None:
    rounds = run["rounds"]
    print_table(rounds)
    verdict = check_targets(rounds)
    eight = rounds.get(8, {})
    summary = {"benchmark": "serve_load", "clients": {str(c): s for c, s in rounds.items()},
               "speedup_8": verdict["speedup_8"], "p50_ttft_8": eight.get("ttft_p50"), "5xx": verdict["5xx"],
               "lost": verdict["lost"], "targets": verdict["targets"], "max_tokens": args.max_tokens,
               "max_batch": run["server"]["queue"]["max_batch"], "base_model": run["server"]["base_model"],
               "device": run["server"]["device"], "cpu": cpu}
    line = json.dumps(summary)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    sys.exit(main())
