"""Start the real `codelora serve` in its own process and talk to it over real HTTP (stdlib only)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from net_helpers import free_port
import warm


def http(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None,
         timeout: float = 120) -> tuple[int, dict]:
    """(status, JSON body, or {"raw": text} when not JSON) for one request; error statuses are returned."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _body(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _body(e.read())


def _body(data: bytes):
    try:
        return json.loads(data or b"null")
    except ValueError:
        return {"raw": data.decode(errors="replace")}


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str, **kw):
        return http("GET", self.url + path, **kw)

    def post(self, path: str, body=None, **kw):
        return http("POST", self.url + path, body, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(log_dir: Path, *args, env: dict | None = None, host: str = "127.0.0.1", startup_s: float = 180):
    """`codelora serve ARGS --port P` until the with-block ends; fails with the server's log if it dies."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = warm.popen([sys.executable, "-m", "codelora", "serve", *map(str, args), "--host", host,
                           "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, **(env or {})})
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
            try:
                if server.get("/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start in {startup_s} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
