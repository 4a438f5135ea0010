"""`run` and `Popen` as in `subprocess`, for `python -m codelora ...`, `python -c CODE` and
`python SCRIPT`: the process is forked from a warm start that has already imported torch, transformers,
peft and codelora (tests/warm_start.py), which saves the ~5 s every fresh interpreter spends importing
them, ~150 times a session (docs/decisions.md).

The child is still a real, separate process running the real entry point, with its own pid, stdio,
cwd, environment, exit status and signals. Any other command, or CODELORA_TEST_COLD=1, goes to
`subprocess` unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
CompletedProcess, TimeoutExpired, CalledProcessError = (subprocess.CompletedProcess, subprocess.TimeoutExpired,
                                                       subprocess.CalledProcessError)
COLD = os.environ.get("CODELORA_TEST_COLD") == "1"
_server: dict = {}


# what a fork cannot change once the interpreter runs (PYTHONPATH and PYTHONUNBUFFERED it can)
STARTUP_ONLY = ("PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONMALLOC", "PYTHONFAULTHANDLER",
                "PYTHONSAFEPATH", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONOPTIMIZE", "PYTHONDONTWRITEBYTECODE")


def _parse(cmd, kwargs: dict) -> tuple[str, str, list[str]] | None:
    """(mode, target, args) of `python -m MOD ARGS`, `python -c CODE ARGS` or `python SCRIPT ARGS`; None
    for what must start a fresh interpreter: another program, interpreter flags, a preexec_fn (a function
    cannot be sent to the warm start), an interpreter setting in the environment that differs from ours."""
    cmd = [str(c) for c in cmd]
    env = kwargs.get("env") or os.environ
    if (COLD or len(cmd) < 2 or cmd[0] != sys.executable or "preexec_fn" in kwargs
            or any(env.get(k) != os.environ.get(k) for k in STARTUP_ONLY)):
        return None
    if cmd[1] in ("-m", "-c"):
        return (cmd[1], cmd[2], cmd[3:]) if len(cmd) > 2 else None
    return None if cmd[1].startswith("-") else ("script", cmd[1], cmd[2:])


class Popen:
    """The part of subprocess.Popen the suite uses. Not warm-startable commands get a real
    subprocess.Popen instead (see `popen`)."""

    def __init__(self, mode: str, target: str, args: list[str], cwd=None, env=None, stdin=None, stdout=None,
                 stderr=None, text: bool = False, start_new_session: bool = False):
        self.args, self.returncode, self.text = [sys.executable, mode, target, *args], None, text
        self.stdin = self.stdout = self.stderr = None
        child_fds, close_after = [], []
        for n, spec in enumerate((stdin, stdout, stderr)):
            if spec is None:
                fd = n
            elif spec == DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                close_after.append(fd)
            elif spec == PIPE:
                read, write = os.pipe()
                ours, fd = (write, read) if n == 0 else (read, write)
                close_after.append(fd)
                setattr(self, ("stdin", "stdout", "stderr")[n], os.fdopen(ours, ("w" if n == 0 else "r") + ("" if text else "b")))
            elif spec == STDOUT:
                fd = child_fds[1]
            else:
                fd = spec if isinstance(spec, int) else spec.fileno()
            child_fds.append(fd)
        request = {"mode": mode, "target": target, "args": args, "cwd": str(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env), "new_session": start_new_session}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(_socket())
            socket.send_fds(self._conn, [json.dumps(request).encode() + b"\n"], child_fds)
            self._lines = self._conn.makefile("r")
            self.pid = int(self._lines.readline().split()[1])
        finally:
            for fd in close_after:
                os.close(fd)

    def poll(self):
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise TimeoutExpired(self.args, timeout)
            self._read_status()
        return self.returncode

    def _read_status(self):
        line = self._lines.readline().split()
        if not line:
            raise RuntimeError("the warm start ended before reporting its child's exit status")
        self.returncode = int(line[1])
        self._conn.close()

    def communicate(self, input=None, timeout=None):
        """Read stdout/stderr pipes to their end (each on its own thread, so neither fills), then wait."""
        if input is not None:
            self.stdin.write(input)
        if self.stdin:
            self.stdin.close()
        readers = {name: _Reader(getattr(self, name)) for name in ("stdout", "stderr") if getattr(self, name)}
        for r in readers.values():
            r.thread.join(timeout)
            if r.thread.is_alive():
                raise TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return tuple(readers[name].data if name in readers else None for name in ("stdout", "stderr"))

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in (self.stdin, self.stdout, self.stderr):
            if f:
                f.close()
        self.wait()


class _Reader:
    def __init__(self, stream):
        self.data = None
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        self.data = stream.read()
        stream.close()


def popen(cmd, **kwargs):
    """Popen(cmd, ...) from the warm start for a Python command it can run, else subprocess.Popen."""
    parsed = _parse(cmd, kwargs)
    if parsed is None:
        return subprocess.Popen(cmd, **kwargs)
    return Popen(*parsed, **kwargs)


def run(cmd, *, capture_output=False, timeout=None, check=False, input=None, **kwargs) -> CompletedProcess:
    """subprocess.run(cmd, ...) with the process from `popen`."""
    if _parse(cmd, kwargs) is None:
        return subprocess.run(cmd, capture_output=capture_output, timeout=timeout, check=check, input=input, **kwargs)
    if capture_output:
        kwargs.update(stdout=PIPE, stderr=PIPE)
    if input is not None:
        kwargs["stdin"] = PIPE
    proc = popen(cmd, **kwargs)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    if check and proc.returncode:
        raise CalledProcessError(proc.returncode, proc.args, stdout, stderr)
    return CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _socket() -> str:
    """Start the warm start once per test session (again if it has died); it ends with the session."""
    if "path" not in _server or _server["proc"].poll() is not None:
        folder = tempfile.mkdtemp(prefix="codelora-warm-")
        path, log = os.path.join(folder, "socket"), Path(folder, "log")
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_start.py")), path],
                                    stdout=PIPE, stderr=err, stdin=DEVNULL, text=True)
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(proc.kill)
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the warm start did not start:\n{log.read_text()}")
        _server.update(path=path, proc=proc)
    return _server["path"]
