"""Progress messages: one `codelora: ...` line on stderr (stdout is kept for results)."""

import sys


def say(msg: str) -> None:
    print(f"codelora: {msg}", file=sys.stderr, flush=True)
