"""Progress messages: one `codelora: ...` line on stderr (stdout is kept for results)."""

import os
import sys


def say(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks for all processes
        return
    print(f"codelora: {msg}", file=sys.stderr, flush=True)
