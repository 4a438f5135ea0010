"""What a run directory remembers of its tracker runs (trackers.json), so that a resumed run
continues the same tracker run."""

from __future__ import annotations

import json
from pathlib import Path

from codelora.io.files import write_json_atomic
from codelora.io.rundir import TRACKERS


def read_state(run_dir: Path) -> dict:
    path = run_dir / TRACKERS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def write_state(run_dir: Path, key: str, value: dict) -> None:
    write_json_atomic(run_dir / TRACKERS, read_state(run_dir) | {key: value})
