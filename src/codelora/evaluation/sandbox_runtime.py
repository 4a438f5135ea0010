"""What runs inside the sandbox (sandbox.py starts it with the system Python; standard library only,
never imported by codelora): two processes, so that the sample cannot forge its own pass signal.

    harness  (trusted: holds the tests and the token; non-dumpable)
      |  spawns, then calls the entry point over two pipes, with plain data only
      v
    child    (untrusted: runs the sample's code as __main__, then answers calls)

The host sends the harness one JSON request on stdin: the token, the tests (`check`), trusted
helper code (HumanEval's prompt: its helpers such as `poly` come from the task, not the sample),
the entry point and the sample's path. The harness reads it, closes stdin and makes itself
non-dumpable (a process of the same uid can then read neither its memory nor its /proc files)
before the child exists; the child is a fresh interpreter (exec), so it inherits no copy of the
token. `check(candidate)` runs in the harness: `candidate` is a proxy whose calls travel to the
child as tagged JSON and come back as plain data (or as handles to objects that stay in the
child). Only after `check` returns does the harness print `VERDICT <token>` on its stdout, which
only the host reads. Whatever the sample does in its own process (exits, patches builtins, reads
its files or /proc, answers calls with anything it likes, kills the harness) it cannot produce
that line: at worst its answers are wrong or the harness dies, and the sample fails.

Wire values: None, bool, int, float (inf/nan too), complex, str, bytes, bytearray, list, tuple,
dict, set, frozenset, nested; any other object stays in the child and crosses as a handle. A
handle never compares equal to plain data, so an object whose __eq__ always says True cannot
satisfy `assert candidate(x) == 42`.
"""

import json
import os
import struct
import sys

VERDICT = "VERDICT"
MAX_MESSAGE = 32 << 20  # bytes; a larger message ends the sample (failed)
_SCALARS = (type(None), bool, int, float, str)


# --- the wire: length-prefixed JSON of tagged values ----------------------------------------


def send(fd, obj):
    data = json.dumps(obj, allow_nan=False).encode()
    os.write(fd, struct.pack(">I", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes is over the limit")
    return json.loads(_read_exact(fd, n))


def encode(value, handles=None):
    """A tagged tree of plain data; other objects become handles (only where `handles`, the
    child's object table, is given)."""
    t = type(value)
    if t in _SCALARS:
        if t is int and value.bit_length() > 52:  # beyond what every JSON reader keeps exact
            return {"int": hex(value)}  # hex: no digit limit for int <-> str
        if t is float:
            return {"float": repr(value)}
        return value
    if t is complex:
        return {"complex": [repr(value.real), repr(value.imag)]}
    if t in (bytes, bytearray):
        return {t.__name__: value.hex()}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [encode(v, handles) for v in value]}
    if t is dict:
        return {"dict": [[encode(k, handles), encode(v, handles)] for k, v in value.items()]}
    if t is Remote:  # harness side: an object of the child's, passed back to it
        return {"handle": object.__getattribute__(value, "_handle")}
    if handles is None:
        raise TypeError(f"only plain data (numbers, strings, bytes, lists, tuples, dicts, sets) can be passed to "
                        f"the candidate, not {t.__name__}")
    handles.append(value)
    return {"handle": len(handles) - 1}


def decode(tree, resolve):
    """The value of a tagged tree; `resolve(i)` turns handle i into an object."""
    if not isinstance(tree, dict):
        if isinstance(tree, list):
            raise ValueError("untagged list on the wire")
        return tree
    ((tag, v),) = tree.items()
    if tag == "int":
        return int(v, 16)
    if tag == "float":
        return float(v)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag in ("bytes", "bytearray"):
        return (bytes if tag == "bytes" else bytearray).fromhex(v)
    if tag in ("list", "tuple", "set", "frozenset"):
        items = [decode(x, resolve) for x in v]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict":
        return {decode(k, resolve): decode(x, resolve) for k, x in v}
    if tag == "handle":
        return resolve(int(v))
    raise ValueError(f"unknown tag {tag!r} on the wire")


# --- harness side: the proxy that check() calls ---------------------------------------------


class Channel:
    def __init__(self, to_child, from_child):
        self.to_child, self.from_child = to_child, from_child

    def ask(self, request):
        send(self.to_child, request)
        reply = receive(self.from_child)
        if "raise" in reply:
            raise _exception(reply["raise"], reply.get("message", ""))
        return reply


def _exception(names, message):
    """The first builtin Exception class among the names of the candidate's exception's MRO: a
    test's `except ValueError` catches a candidate's ValueError; BaseExceptions (SystemExit, ...)
    never cross."""
    import builtins

    for name in names if isinstance(names, list) else []:
        cls = getattr(builtins, str(name), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(str(message))
    return RuntimeError(f"the candidate raised {names!r}: {message}")


class Remote:
    """An object that lives in the child: the entry point (handle 0) or something it returned."""

    def __init__(self, channel, handle):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)

    def _op(self, op, **fields):
        reply = self._channel.ask({"op": op, "handle": self._handle, **fields})
        return decode(reply["value"], lambda i: Remote(self._channel, i))

    def __call__(self, *args, **kwargs):
        reply = self._channel.ask({"op": "call", "handle": self._handle, "args": encode(list(args)),
                                   "kwargs": encode(kwargs)})
        for original, after in zip(args, decode(reply["args"], lambda i: None)):
            _update_in_place(original, after)  # the candidate may have sorted a list in place
        return decode(reply["value"], lambda i: Remote(self._channel, i))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._op("getattr", name=name)

    def __setattr__(self, name, value):
        self._op("setattr", name=name, arg=encode(value))

    def __len__(self):
        n = self._op("len")
        if type(n) is not int:
            raise TypeError("len() of the candidate's object is not an int")
        return n

    def __str__(self):
        return _text(self._op("str"))

    def __repr__(self):
        return _text(self._op("repr"))

    def __bool__(self):
        return self._op("bool") is True

    def __iter__(self):
        return iter(self._op("list"))

    def __contains__(self, item):
        return self._op("contains", arg=encode(item)) is True

    def __getitem__(self, key):
        return self._op("getitem", arg=encode(key, []))

    def __setitem__(self, key, value):
        self._op("setitem", arg=encode([key, value]))

    # identity only: a handle is never == plain data, whatever the child's __eq__ would say
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__


def _text(value):
    if type(value) is not str:
        raise TypeError("str() / repr() of the candidate's object is not a str")
    return value


def _update_in_place(original, after):
    if type(original) is list and type(after) is list:
        original[:] = after
    elif type(original) in (dict, set) and type(after) is type(original):
        original.clear()
        original.update(after)


def _make_undumpable():
    """PR_SET_DUMPABLE 0: the child (same uid) can neither ptrace us nor open /proc/<us>/mem, fd,
    environ. Fail closed: without it no verdict can be given."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


def harness():
    _make_undumpable()
    request = json.loads(sys.stdin.buffer.read())
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # fd 0 again, so that the pipes below get other numbers
    token = request.pop("token")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    import subprocess

    # the sample's output goes to our stderr (a host file): our stdout carries only the verdict
    child = subprocess.Popen(
        [sys.executable, "-I", "-B", "-u", os.path.abspath(__file__), "child", str(to_child_r), str(from_child_w),
         request["sample"], request["entry_point"]],
        stdin=subprocess.DEVNULL, stdout=2, stderr=2, pass_fds=(to_child_r, from_child_w),
        cwd=os.path.dirname(request["sample"]))
    os.close(to_child_r)
    os.close(from_child_w)
    channel = Channel(to_child_w, from_child_r)
    try:
        ready = receive(from_child_r)  # the sample's top-level code ran to its end
        if "raise" in ready:
            raise _exception(ready["raise"], ready.get("message", ""))
        if request["entry_point"]:
            namespace = {"__name__": "__codelora_tests__"}
            exec(compile(request["helpers"] + "\n\n" + request["test"], "<tests>", "exec"), namespace)
            candidate = namespace[request["entry_point"]] = Remote(channel, 0)  # tests may name it (HumanEval/33)
            namespace["check"](candidate)
    except BaseException as e:  # whatever went wrong, no verdict
        import traceback

        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:]))
        child.kill()
        return 1
    sys.stdout.write(f"{VERDICT} {token}\n")
    sys.stdout.flush()
    child.kill()
    return 0


# --- child side: run the sample, then answer calls ------------------------------------------


def child(requests_fd, replies_fd, sample_path, entry_point):
    import traceback

    requests_fd, replies_fd = int(requests_fd), int(replies_fd)
    namespace = {"__name__": "__main__", "__file__": sample_path}
    try:
        with open(sample_path, encoding="utf-8") as f:
            code = compile(f.read(), sample_path, "exec")
        exec(code, namespace)
        if entry_point and entry_point not in namespace:
            raise NameError(f"the answer does not define {entry_point}")
    except BaseException as e:
        traceback.print_exc()
        send(replies_fd, {"raise": [c.__name__ for c in type(e).__mro__], "message": str(e)[:2000]})
        return 1
    handles = [namespace.get(entry_point)]
    send(replies_fd, {"ready": True})

    def value(tree):
        return decode(tree, lambda i: handles[i])

    while True:
        try:
            request = receive(requests_fd)
        except EOFError:
            return 0
        try:
            target, op = handles[request["handle"]], request["op"]
            extra = {}
            if op == "call":
                args, kwargs = value(request["args"]), value(request["kwargs"])
                result = target(*args, **kwargs)
                extra = {"args": encode([a if type(a) in (list, dict, set) else None for a in args], [])}
            elif op == "getattr":
                result = getattr(target, request["name"])
            elif op == "setattr":
                result = setattr(target, request["name"], value(request["arg"]))
            elif op == "len":
                result = len(target)
            elif op in ("str", "repr"):
                result = (str if op == "str" else repr)(target)
            elif op == "bool":
                result = bool(target)
            elif op == "list":
                result = list(target)
            elif op == "contains":
                result = value(request["arg"]) in target
            elif op == "getitem":
                result = target[value(request["arg"])]
            elif op == "setitem":
                key, item = value(request["arg"])
                target[key] = item
                result = None
            else:
                raise ValueError(f"unknown operation {op!r}")
            reply = {"value": encode(result, handles), **extra}
        except BaseException as e:  # the candidate's exception crosses as its class names
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            reply = {"raise": [c.__name__ for c in type(e).__mro__], "message": str(e)[:2000]}
        send(replies_fd, reply)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "harness":
        sys.exit(harness())
    if role == "child":
        sys.exit(child(*sys.argv[2:6]))
    sys.exit("usage: sandbox_runtime.py harness|child ...")
