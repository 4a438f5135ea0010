"""Run Python code with its stderr on a pseudo-terminal, as a user's shell would, and read what it
drew there: how the tests see codelora's progress bars."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import warm

TESTS = Path(__file__).resolve().parent
ETA = r"\[\d\d:\d\d<\d\d:\d\d"  # tqdm's [elapsed<remaining: the bar has an ETA


def run_in_pty(code: str, env: dict | None = None, timeout: float = 120) -> str:
    """Run `code` in a fresh Python whose stderr is a 120-column terminal; what it drew there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    proc = warm.popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=slave, env=full_env, cwd=TESTS.parent)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def run_command_in_pty(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run `cmd` with stderr on a pseudo-terminal (what a user's shell gives it); (exit code, stderr, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal's size (a bare pty has 0x0)
    proc = warm.popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), stdout.decode(errors="replace")



def run_cli_in_pty(*argv, env: dict | None = None, timeout: float = 300) -> str:
    """The codelora command line in a terminal (not quiet unless asked); what it drew on stderr."""
    code = f"""
        import sys
        from codelora.cli import main
        sys.exit(main({[str(a) for a in argv]!r}))
    """
    return run_in_pty(code, env={"CODELORA_QUIET": "", **(env or {})}, timeout=timeout)


def stages_shown(drawn: str, desc: str) -> list[str]:
    """The stages a console.Stages bar showed, in order, when each one's count on the bar (k of
    total) is its position: a wrong total or a stage shown out of turn fails the comparison."""
    shown = re.findall(re.escape(desc) + r": +\d+%\|.*?\| (\d+)/(\d+) \[[^,\]]*, [^,\]]*stage[^,\]]*, ([^\]]+)\]", drawn)
    first: dict[str, tuple[int, int]] = {}
    for n, total, name in shown:
        first.setdefault(name, (int(n), int(total)))
    names = list(first)
    if any(n != i or total != len(names) for i, (n, total) in enumerate(first.values())):
        return [f"{name} at {n}/{total}" for name, (n, total) in first.items()]
    return names
