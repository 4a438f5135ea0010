"""The suite's warm start (tests/warm.py) gives what subprocess gives: a separate process with the caller's
argv, cwd, environment and stdio, its exit status (negative for a signal), and a fresh interpreter where a
fork cannot reproduce one."""

import json
import os
import signal
import subprocess
import sys

import pytest

import warm

SHOW = ("import json, os, sys; print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'pid': os.getpid(), "
        "'ppid': os.getppid(), 'env': os.environ.get('WARM_TEST'), 'path0': sys.path[0], 'hash': hash('codelora')})); "
        "print('to stderr', file=sys.stderr); sys.exit(int(sys.argv[1]))")


def test_a_child_gets_the_callers_argv_cwd_environment_and_stdio(tmp_path):
    r = warm.run([sys.executable, "-c", SHOW, "3"], capture_output=True, text=True, cwd=tmp_path,
                 env={**os.environ, "WARM_TEST": "yes"}, timeout=60)
    seen = json.loads(r.stdout)
    assert r.returncode == 3 and r.stderr == "to stderr\n"
    assert seen["argv"] == ["-c", "3"] and seen["cwd"] == str(tmp_path) and seen["env"] == "yes"
    assert seen["pid"] != os.getpid() and seen["path0"] == ""
    assert (seen["ppid"] == os.getpid()) == warm.COLD  # forked by the warm start, unless told to start cold
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    r = warm.run([sys.executable, script, "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["path0"] == str(tmp_path)


def test_the_entry_point_exit_codes_and_uncaught_errors_are_as_from_a_fresh_interpreter(tmp_path):
    r = warm.run([sys.executable, "-m", "codelora", "run", tmp_path / "missing.yaml"], capture_output=True,
                 text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("codelora: error: config file not found")
    r = warm.run([sys.executable, "-c", "raise ValueError('boom')"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("Traceback") and "ValueError: boom" in r.stderr
    r = warm.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input="hi",
                 capture_output=True, text=True, timeout=60)
    assert r.stdout == "HI\n"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_signalled_child_reports_the_signal(sig):
    proc = warm.popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                      stdout=warm.PIPE, text=True)
    assert proc.stdout.readline() == "up\n" and proc.poll() is None
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == -sig


def test_a_timeout_kills_the_child_and_raises():
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)


def test_what_a_fork_cannot_reproduce_starts_a_fresh_interpreter():
    hashes = set()
    for seed in ("1", "2"):  # the hash seed is fixed when an interpreter starts: a fork would share ours
        r = warm.run([sys.executable, "-c", SHOW, "0"], capture_output=True, text=True, timeout=60,
                     env={**os.environ, "PYTHONHASHSEED": seed})
        hashes.add(json.loads(r.stdout)["hash"])
    assert len(hashes) == 2
    other = warm.popen(["true"])  # another program
    assert not isinstance(other, warm.Popen) and other.wait(timeout=30) == 0
