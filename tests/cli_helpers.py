import contextlib
import io
import os
import signal
import subprocess
import sys

import warm


def run_cli(*args, timeout=900, cwd=None):
    """Run the real console entry point in its own process (what a user runs), forked from the suite's warm
    start (tests/warm.py)."""
    return warm.run([sys.executable, "-m", "codelora", *map(str, args)], capture_output=True, text=True,
                    timeout=timeout, cwd=cwd)


def call_cli(*args) -> subprocess.CompletedProcess:
    """codelora.cli.main in this process, its output captured: for error paths, where a fresh process adds
    only start-up time. Usage errors (argparse's SystemExit) come back as their exit code too."""
    from codelora.cli import main

    out, err = io.StringIO(), io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    environ = dict(os.environ)  # --quiet sets CODELORA_QUIET for child processes: keep it out of later tests
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            os.environ.clear()
            os.environ.update(environ)
    return subprocess.CompletedProcess(["codelora", *map(str, args)], code, out.getvalue(), err.getvalue())
