"""Run untrusted, model-generated Python in a sandbox process: never in the codelora process.

Each sample gets a fresh temporary directory and its own process group, and runs as:

    setpriv (root only: drop to an unprivileged uid no other sample uses now)
      -> prlimit (address space, processes, file size, CPU seconds, no core dumps)
        -> bwrap (read-only /usr, private /tmp, /proc, /dev; no network, PID, IPC, user namespaces
                  of its own; only the sample's directory is writable, the harness is read-only)
          -> /usr/bin/python3 -I -B harness  (trusted: the tests, the token)
               -> /usr/bin/python3 -I -B child  (the sample's code; answers the harness's calls)

A wall-clock timeout kills the whole group (and, as root, every process of the sample's uid).
Output goes to files capped by RLIMIT_FSIZE, so 100 MB of output ends the sample.

The pass signal cannot be forged from inside the sample: the tests run in the harness process,
which alone learns a random token (on its stdin, before the sample's process exists) and prints
it only after `check()` returned (sandbox_runtime.py explains how). The sample's process sees
neither the token nor the tests, and its answers cross as plain data.

Where bwrap cannot start, the sandbox falls back to rlimits + own session + (as root) a
distinct uid, and `isolation()` says "reduced": then writes outside the directory are limited
only by file permissions and the network is not blocked.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from codelora.config import EvalConfig

PYTHON = "/usr/bin/python3"  # readable by an unprivileged uid (venvs under /root are not)
UID_BASE = 61000  # slot k runs as uid UID_BASE + k: RLIMIT_NPROC counts per uid
UIDS = 256  # uids UID_BASE .. UID_BASE + 255, shared by every codelora process on the machine
LOCK_DIR = Path("/run/codelora-sandbox")  # one lock per uid (root only: /run is root's)
RUNTIME = Path(__file__).with_name("sandbox_runtime.py")  # harness + child, standard library only


@dataclass(frozen=True)
class Limits:
    timeout_s: float = EvalConfig.timeout  # wall clock (eval.timeout)
    cpu_s: int = 0  # CPU seconds; 0: the wall-clock timeout, rounded down, at least 1
    memory_mb: int = EvalConfig.sandbox_memory_mb  # RLIMIT_AS
    processes: int = EvalConfig.sandbox_processes  # RLIMIT_NPROC (per uid; enforced only when started as root)
    file_mb: int = EvalConfig.sandbox_file_mb  # RLIMIT_FSIZE: any file, stdout and stderr included
    output_chars: int = 4000  # kept of stdout/stderr for the report

    @classmethod
    def of(cls, ec: EvalConfig) -> Limits:
        """The limits an eval section sets."""
        return cls(timeout_s=ec.timeout, memory_mb=ec.sandbox_memory_mb, processes=ec.sandbox_processes,
                   file_mb=ec.sandbox_file_mb)

    def __post_init__(self) -> None:
        if not self.cpu_s:  # frozen: set through object.__setattr__, as dataclasses do
            object.__setattr__(self, "cpu_s", max(1, int(self.timeout_s)))


@dataclass
class Outcome:
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def bwrap_works() -> bool:
    if not shutil.which("bwrap"):
        return False
    try:
        return subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--unshare-user", "--disable-userns", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def isolation() -> str:
    """'full' (bwrap namespaces + rlimits) or 'reduced' (rlimits and own session only)."""
    return "full" if bwrap_works() else "reduced"


def _command(workdir: Path, harness: Path, limits: Limits, uid: int | None) -> list[str]:
    cmd = []
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    cmd += ["prlimit", f"--as={limits.memory_mb << 20}", f"--fsize={limits.file_mb << 20}",
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", "--core=0", "--nofile=64"]
    if uid is not None:
        cmd.append(f"--nproc={limits.processes}")
    cmd.append("--")
    if bwrap_works():
        cmd += ["bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
                "/lib64", "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                "--bind", str(workdir), "/sandbox", "--ro-bind", str(harness), "/harness", "--chdir", "/sandbox",
                "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
                "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/sandbox",
                PYTHON, "-I", "-B", "/harness/runtime.py", "harness"]
    else:
        cmd += [PYTHON, "-I", "-B", str(harness / "runtime.py"), "harness"]
    return cmd


@functools.lru_cache(maxsize=1)
def _become_subreaper() -> bool:
    """Orphans of a sample (bwrap's own child, a daemonised grandchild) are re-parented to us
    instead of to PID 1, so we can reap them at once: a zombie still counts against the uid's
    RLIMIT_NPROC, and some init processes reap only every few seconds."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _pids_of(uid: int) -> list[int]:
    """Live processes of `uid`; zombies that are our children are reaped on the way."""
    pids, me = [], os.getpid()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    pids.append(int(pid))
                elif int(fields[1]) == me:
                    os.waitpid(int(pid), os.WNOHANG)
            except (FileNotFoundError, ProcessLookupError, ChildProcessError, IndexError):
                pass
    return pids


def _kill_uid(uid: int, wait_s: float = 5.0) -> None:
    """Kill every process of the slot's uid (children that left the process group too), and
    wait until they are gone: RLIMIT_NPROC would otherwise count them against the next sample."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = _pids_of(uid)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


@contextlib.contextmanager
def _claimed_uid(slot: int):
    """A sandbox uid that no other sample uses now, held until the block ends: the slot's own if
    free, else the next free one. Two samples sharing a uid (two `codelora eval`s at once) would
    share RLIMIT_NPROC and kill each other's processes on a timeout (`_kill_uid`)."""
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    order = [(slot + i) % UIDS for i in range(UIDS)]
    for attempt, k in enumerate(order + [slot]):
        fd = os.open(LOCK_DIR / f"{UID_BASE + k}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            # flock is per open file: it excludes other threads of this process as well
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if attempt == UIDS else fcntl.LOCK_NB))  # all busy: wait
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield UID_BASE + k
        finally:
            os.close(fd)
        return


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n[... truncated]" if len(data) > limit else "")


def run_program(code: str, test: str = "", entry_point: str = "", helpers: str = "", limits: Limits = Limits(),
                slot: int = 0) -> Outcome:
    """Run the sample `code` in the sandbox, then, when `entry_point` is given, the tests' `check(entry
    point)` in the harness (`helpers`: trusted code the tests may use, such as HumanEval's prompt).
    It passes only if the sample's code ran to its end and `check` returned."""
    if os.geteuid() != 0:  # not root: no uid to drop to, the sample runs as ours
        return _run_as(None, code, test, entry_point, helpers, limits)
    with _claimed_uid(slot) as uid:
        return _run_as(uid, code, test, entry_point, helpers, limits)


def _run_as(uid: int | None, code: str, test: str, entry_point: str, helpers: str, limits: Limits) -> Outcome:
    token = secrets.token_hex(16)
    _become_subreaper()
    host = Path(tempfile.mkdtemp(prefix="codelora-sandbox-"))
    try:
        work, harness = host / "work", host / "harness"
        work.mkdir()
        harness.mkdir()
        shutil.copyfile(RUNTIME, harness / "runtime.py")
        (work / "sample.py").write_text(code, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(work / "sample.py", uid, uid)
        for path, mode in ((host, 0o711), (harness, 0o755), (harness / "runtime.py", 0o644)):
            os.chmod(path, mode)
        inside = Path("/sandbox") if bwrap_works() else work
        request = json.dumps({"token": token, "test": test, "helpers": helpers, "entry_point": entry_point,
                              "sample": str(inside / "sample.py")}).encode()
        t0 = time.perf_counter()
        with open(host / "stdout", "wb") as out, open(host / "stderr", "wb") as err:
            proc = subprocess.Popen(_command(work, harness, limits, uid), stdin=subprocess.PIPE, stdout=out,
                                    stderr=err, start_new_session=True, cwd=work, env={"PATH": "/usr/bin:/bin"})
            try:
                try:
                    proc.stdin.write(request)
                    proc.stdin.close()
                except BrokenPipeError:  # the harness died at once; it fails below
                    pass
                rc = proc.wait(timeout=limits.timeout_s)
                status = None
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()  # reap first: a zombie still counts as a process of the uid
                if uid is not None:
                    _kill_uid(uid)
        seconds = time.perf_counter() - t0
        verdict = _read_capped(host / "stdout", 200)
        passed = status is None and rc == 0 and verdict == f"VERDICT {token}\n"
        return Outcome(status or ("passed" if passed else "failed"), rc, "",
                       _read_capped(host / "stderr", limits.output_chars), round(seconds, 3))
    finally:
        shutil.rmtree(host, ignore_errors=True)
