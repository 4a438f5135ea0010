"""The server side of `warm.py`: a Python process that has imported what codelora's commands import
(torch, transformers, peft, every codelora module) once, and forks one child per command it is sent.

Each child becomes the command (the caller's argv, cwd, environment, stdin/stdout/stderr) and exits as
an interpreter would; this process reaps it and sends its exit status back. Run by `warm.py` only.

Protocol over a Unix socket, one connection per command: the client sends one JSON line
{"mode", "target", "args", "cwd", "env", "new_session"} with three file descriptors (stdin, stdout,
stderr); this process answers "pid N\n" once forked and "exit CODE\n" when the child has ended (CODE as
Popen.returncode gives it: negative for a signal).
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import io
import json
import os
import pkgutil
import runpy
import select
import socket
import sys
import threading
import traceback
import types


def preload() -> None:
    """Import every codelora module and every library codelora imports inside a function (found by
    test_architecture.function_level_imports: torch, transformers, peft, metrics, charts, trackers, ...).
    A library that is not installed (or fails to import) is skipped: a command that needs it fails in the
    child, as it would; a test that hides one (sys.modules[name] = None) hides it in its child all the same.
    No torch operation runs here: OpenMP's threads start in each child, with the child's environment."""
    from test_architecture import OTHER_INTERPRETER, function_level_imports

    from codelora.io.figures import pyplot

    pyplot()  # matplotlib on the Agg backend, as codelora selects it before its first chart
    import codelora

    for mod in pkgutil.walk_packages(codelora.__path__, "codelora."):
        if mod.name != "codelora.__main__":
            _load(mod.name)
    for rel, _, module, names in function_level_imports():
        if rel not in OTHER_INTERPRETER and not module.startswith((".", "codelora")):
            _load(module, names)


def _load(module: str, names: tuple[str, ...] = ()) -> None:
    """`import module` / `from module import names` (a name may be a submodule, or one of transformers'
    lazily loaded classes)."""
    try:
        loaded = importlib.import_module(module)
        for name in names:
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ImportError:
                getattr(loaded, name, None)  # a class or function (transformers loads its classes lazily)
    except Exception:  # not installed, or failing here: the child imports it itself and fails as it would
        pass


def exit_code(e: SystemExit) -> int:
    """What the interpreter makes of `raise SystemExit(code)`."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def become(request: dict) -> None:
    """Set this process up as `python MODE TARGET ARGS` would start: environment, cwd, stdio buffering,
    sys.argv and sys.path (PYTHONPATH's entries included)."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=unbuffered)
    sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=sys.stdin.encoding)
    mode, target = request["mode"], request["target"]
    sys.path[0] = os.getcwd() if mode == "-m" else "" if mode == "-c" else os.path.dirname(os.path.abspath(target))
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[1:1] = [os.path.abspath(p) for p in extra]
    sys.argv = [{"-m": target, "-c": "-c"}.get(mode, target), *request["args"]]


def run(request: dict) -> int:
    mode, target = request["mode"], request["target"]
    try:
        if mode == "-m":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif mode == "-c":
            main = types.ModuleType("__main__")
            main.__builtins__ = builtins
            sys.modules["__main__"] = main
            exec(compile(target, "<string>", "exec"), main.__dict__)
        else:
            runpy.run_path(target, run_name="__main__")
        return 0
    except SystemExit as e:
        return exit_code(e)
    except BaseException:  # uncaught: the traceback a fresh interpreter prints
        traceback.print_exc()
        return 1


def child(request: dict, fds: list[int]) -> None:
    """Become the command, run it, exit as the interpreter does (threads joined, atexit handlers run,
    buffers flushed). Never returns."""
    code = 1
    try:
        if request["new_session"]:
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        become(request)
        code = run(request)
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not message.endswith(b"\n"):
        message += conn.recv(1 << 20)
    return json.loads(message), fds


def reap(children: dict[int, socket.socket]) -> None:
    """Send each ended child's exit status to its caller."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:  # the caller stopped waiting
                pass
            conn.close()


def serve(path: str) -> None:
    preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    children: dict[int, socket.socket] = {}
    parent = os.getppid()
    print("ready", flush=True)
    while os.getppid() == parent:  # the suite that started us is gone: so are we
        if select.select([server], [], [], 0.05)[0]:
            conn, _ = server.accept()
            request, fds = receive(conn)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                for other in [conn, *children.values()]:
                    other.close()
                child(request, fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"pid {pid}\n".encode())
            children[pid] = conn
        reap(children)


if __name__ == "__main__":
    serve(sys.argv[1])
