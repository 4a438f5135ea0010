"""The sandbox against an adversarial corpus: every sample fails or times out, the host is
untouched, and the whole corpus finishes in bounded time."""

import os
import socket
import subprocess
import sys
import time

import pytest

from codelora.evaluation.sandbox import UID_BASE, UIDS, Limits, isolation, run_program

# 3 s: three programs of the corpus (fork flood, setsid escape, infinite loop) end by the timeout
LIMITS = Limits(timeout_s=3, cpu_s=3, memory_mb=512, processes=32, file_mb=8)
SPARE = UIDS - 1  # a slot no concurrent sample takes (they start from slot 0): its uid's processes are ours


def _uid_processes(uid):
    out = subprocess.run(["ps", "-o", "pid=", "-u", str(uid)], capture_output=True, text=True).stdout
    return [p for p in out.split() if p.strip()]


def test_a_correct_program_passes_and_an_early_exit_does_not():
    assert run_program("assert sum([1, 2]) == 3", limits=LIMITS).passed
    assert run_program("import sys\nsys.exit(0)\nassert False", limits=LIMITS).status == "failed"
    assert run_program("import os\nos._exit(0)\nassert False", limits=LIMITS).status == "failed"
    assert run_program("raise SystemExit", limits=LIMITS).status == "failed"


@pytest.mark.skipif(isolation() != "full", reason="bubblewrap cannot start here: the sandbox runs with reduced "
                    "isolation (documented); install bubblewrap (make test does, as root) to run this test")
def test_adversarial_corpus(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    cwd_file = os.path.join(os.getcwd(), "pyproject.toml")
    before = open(cwd_file, "rb").read()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    corpus = {
        "fork flood": "import os, time\nfor _ in range(300):\n    try:\n        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n    except OSError:\n        pass\ntime.sleep(60)",
        "setsid escape": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\ntime.sleep(60)",
        "infinite loop": "while True:\n    pass",
        "10 GB allocation": "x = bytearray(10 * 1024 ** 3)",
        "write outside": f"open({str(canary)!r}, 'w').write('pwned')\nopen('/tmp/codelora_pwned', 'w').write('x')",
        "delete files": f"import os, shutil\nos.remove({str(canary)!r})\nshutil.rmtree({os.getcwd()!r})",
        "network socket": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'x')",
        "exit before asserts": "import os\nos._exit(0)\nassert False",
        "100 MB of stdout": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\nsys.stdout.flush()\nassert False",
    }
    t0 = time.perf_counter()
    outcomes = {name: run_program(code, limits=LIMITS, slot=SPARE) for name, code in corpus.items()}
    elapsed = time.perf_counter() - t0
    server.settimeout(0.2)
    try:
        conn, _ = server.accept()
        connected = True
        conn.close()
    except OSError:
        connected = False
    server.close()
    for name, o in outcomes.items():
        assert o.status in ("failed", "timeout"), (name, o)
    assert outcomes["infinite loop"].status == "timeout"
    assert canary.read_text() == "keep me" and open(cwd_file, "rb").read() == before
    assert not os.path.exists("/tmp/codelora_pwned")
    assert len(outcomes["100 MB of stdout"].stdout) < 10_000
    assert elapsed < 9 * (LIMITS.timeout_s + 6)
    if os.geteuid() == 0:
        assert _uid_processes(UID_BASE + SPARE) == []  # no forked child outlives its sample
    assert not connected  # a private network namespace: the host's loopback is unreachable


@pytest.mark.skipif(os.geteuid() != 0, reason="per-uid process caps need root to switch uids")
def test_no_sample_process_survives():
    run_program("import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(30)\n", limits=LIMITS,
                slot=SPARE)
    assert _uid_processes(UID_BASE + SPARE) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="samples get uids of their own only as root")
def test_a_uid_another_process_is_using_is_not_shared():
    """Two codelora processes at once (two evals, or eval beside improve) never run samples under one
    uid: one's timeout kills every process of its uid, and RLIMIT_NPROC counts per uid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom codelora.evaluation.sandbox import _claimed_uid\n"
         f"with _claimed_uid({SPARE - 1}) as uid:\n    print(uid, flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())  # that slot's uid, or the next free one
        outcome = run_program("import os, sys\nprint('uid', os.getuid(), file=sys.stderr)", limits=LIMITS,
                              slot=held - UID_BASE)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert outcome.passed, outcome.stderr
    uid = int(outcome.stderr.split("uid ")[1].split()[0])
    assert uid != held and UID_BASE <= uid < UID_BASE + UIDS
