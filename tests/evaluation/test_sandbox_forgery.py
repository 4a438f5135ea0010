"""The pass signal cannot be forged from inside the sample: a corpus of wrong answers that try to
count as passed (exit early, forge the verdict, read the harness's secrets, patch builtins,
always-equal objects, tamper with the tests) all fail; the same answers made correct pass, so
the harness is not simply failing everything."""

import json

import pytest

from codelora.evaluation import sandbox_runtime as rt
from codelora.evaluation.sandbox import Limits, isolation, run_program

# 4 s: one forgery (answering the harness's call itself) blocks until the timeout ends it
LIMITS = Limits(timeout_s=4, cpu_s=4, memory_mb=512, processes=32, file_mb=8)
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(10, -4) == 6\n"
WRONG = "def add(a, b):\n    return a - b\n"

# every attack is prepended to the wrong answer (or replaces it); each must fail
FORGERIES = {
    "exit 0 before the tests": WRONG + "import os\nos._exit(0)\n",
    "sys.exit(0) before the tests": WRONG + "import sys\nsys.exit(0)\n",
    "exit 0 when called": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "SystemExit when called": "def add(a, b):\n    raise SystemExit(0)\n",
    "kill the harness": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    "print a verdict": WRONG + "import os, sys\nprint('VERDICT 0123456789abcdef0123456789abcdef')\n"
                       "os.write(1, b'VERDICT x\\n'); os.write(2, b'VERDICT x\\n')\n",
    "old marker from own source": WRONG + (
        "import re\nsrc = open(__file__).read()\ntoks = re.findall(r'[0-9a-f]{32}', src)\n"
        "open('__codelora_passed__', 'w').write(toks[-1] if toks else 'x')\nimport os\nos._exit(0)\n"),
    "always-equal result": "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                           "def add(a, b):\n    return E()\n",
    "patch builtins and AssertionError": WRONG + (
        "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})\n"
        "builtins.isinstance = lambda *a: True\n"),
    "tamper with the tests": WRONG + (
        "import glob\nfor p in glob.glob('/harness/*') + glob.glob('/sandbox/*'):\n"
        "    try:\n        open(p, 'w').write('def check(candidate):\\n    pass\\n')\n    except OSError:\n        pass\n"),
    "read the harness's memory, fds and environment": WRONG + (
        "import os, re\nppid = os.getppid()\nfound = set()\n"
        "for name in ('environ', 'cmdline', 'mem', 'fd/0', 'fd/1', 'maps'):\n"
        "    try:\n        data = open(f'/proc/{ppid}/{name}', 'rb').read(1 << 20)\n"
        "        found |= set(re.findall(rb'[0-9a-f]{32}', data))\n        print(name, 'readable')\n"
        "    except OSError as e:\n        print(name, type(e).__name__)\n"
        "for tok in found:\n    for fd in ('1', '2'):\n        try:\n"
        "            open(f'/proc/{ppid}/fd/{fd}', 'w').write(f'VERDICT {tok.decode()}\\n')\n"
        "        except OSError:\n            pass\n"),
    "search own memory for a token": WRONG + (
        "import gc, re, os\nhits = [o for o in gc.get_objects() if isinstance(o, str) and re.fullmatch('[0-9a-f]{32}', o)]\n"
        "env = open('/proc/self/environ', 'rb').read()\nprint('hits', len(hits), re.findall(rb'[0-9a-f]{32}', env))\n"),
    "answer the harness's call itself": WRONG + (
        "import os, json, struct\nn = struct.unpack('>I', os.read(3, 4))[0]\nos.read(3, n)\n"
        "reply = json.dumps({'value': 3, 'args': {'list': []}}).encode()\n"
        "os.write(4, struct.pack('>I', len(reply)) + reply)\nos._exit(0)\n"),
    "ptrace the harness": WRONG + (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())\n"),  # PTRACE_ATTACH
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_pass_is_counted_as_failed(name):
    outcome = run_program(FORGERIES[name], TEST, "add", limits=LIMITS)
    assert outcome.status in ("failed", "timeout"), (name, outcome)


def test_the_harness_secrets_are_out_of_the_samples_reach():
    out = run_program(FORGERIES["read the harness's memory, fds and environment"], TEST, "add", limits=LIMITS)
    for name in ("environ", "mem", "fd/0", "fd/1"):  # non-dumpable: /proc/<harness>/* is not ours
        assert f"{name} PermissionError" in out.stderr, out.stderr
    out = run_program(FORGERIES["search own memory for a token"], TEST, "add", limits=LIMITS)
    assert "hits 0 []" in out.stderr, out.stderr


def test_correct_answers_pass_through_the_proxy():
    assert run_program("def add(a, b):\n    return a + b\n", TEST, "add", limits=LIMITS).passed
    # in-place mutation comes back; exceptions cross by builtin class; classes through handles
    sort_test = "def check(c):\n    xs = [3, 1, 2]\n    assert c(xs) is None\n    assert xs == [1, 2, 3]\n"
    assert run_program("def srt(xs):\n    xs.sort()\n", sort_test, "srt", limits=LIMITS).passed
    assert not run_program("def srt(xs):\n    return sorted(xs)\n", sort_test, "srt", limits=LIMITS).passed
    stack = ("class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n"
             "        self.items.append(x)\n    def pop(self):\n        if not self.items:\n"
             "            raise IndexError('empty')\n        return self.items.pop()\n"
             "    def __len__(self):\n        return len(self.items)\n")
    stack_test = ("def check(c):\n    s = c()\n    s.push(1)\n    s.push((2, 'x'))\n    assert len(s) == 2\n"
                  "    assert s.items == [1, (2, 'x')]\n    assert s.pop() == (2, 'x')\n    s.pop()\n"
                  "    try:\n        s.pop()\n    except IndexError:\n        pass\n    else:\n        assert False\n")
    assert run_program(stack, stack_test, "Stack", limits=LIMITS).passed
    assert not run_program(stack.replace("raise IndexError('empty')", "return None"), stack_test, "Stack",
                           limits=LIMITS).passed
    # a sample whose top-level code fails, or that lacks the entry point, fails
    assert not run_program("def add(a, b):\n    return a + b\nraise ValueError", TEST, "add", limits=LIMITS).passed
    assert not run_program("def plus(a, b):\n    return a + b\n", TEST, "add", limits=LIMITS).passed


def test_the_wire_carries_plain_data_exactly_and_nothing_else():
    value = [None, True, -3, 10 ** 400, -(2 ** 70), 0.1, float("inf"), 1 - 2j, "é\x00", b"\xff", bytearray(b"a"),
             (1, (2,)), {"a": [1], 3: {4}}, {frozenset({1})}, frozenset()]
    wire = json.loads(json.dumps(rt.encode(value)))
    back = rt.decode(wire, lambda i: None)
    assert back == value and [type(x) for x in back] == [type(x) for x in value]
    nan = rt.decode(json.loads(json.dumps(rt.encode(float("nan")))), lambda i: None)
    assert nan != nan
    with pytest.raises(TypeError, match="only plain data"):
        rt.encode([lambda: 1])
    handles = []
    assert rt.encode([object()], handles) == {"list": [{"handle": 0}]} and len(handles) == 1
    with pytest.raises(ValueError, match="unknown tag"):
        rt.decode({"eval": "1"}, lambda i: None)


@pytest.mark.skipif(isolation() != "full", reason="bubblewrap cannot start here (reduced isolation)")
def test_the_harness_and_its_tests_are_read_only_to_the_sample():
    probe = WRONG + ("import os\nfor p in ('/harness/runtime.py', '/harness'):\n    try:\n"
                     "        open(p + ('' if p.endswith('.py') else '/x'), 'a')\n        print(p, 'writable')\n"
                     "    except OSError as e:\n        print(p, e.errno)\n")
    out = run_program(probe, TEST, "add", limits=LIMITS)
    lines = [line for line in out.stderr.splitlines() if line.startswith("/harness")]
    assert len(lines) == 2 and all(line.split()[-1] in ("13", "30") for line in lines), out.stderr  # EACCES/EROFS
