"""Files written whole or not at all, their hashes, and OS errors said in one line."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path


def describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    return reason + (" (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints and adapters can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
