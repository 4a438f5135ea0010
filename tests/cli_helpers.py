import subprocess
import sys


def run_cli(*args, timeout=900, cwd=None):
    """Run the real console entry point in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "codelora", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
