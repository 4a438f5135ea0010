"""Read instruction/input/output rows from a Hub dataset or a local JSON/JSONL/Parquet/CSV file.

Rows are plain dicts with string values. A column missing from the file is an error; a row
that cannot be used (empty instruction or output, a non-text value) is dropped and counted by
reason, never silently. The data issue adds the full validation and cleaning stage.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from codelora.errors import DataError, first_line
from codelora.hub import force_offline, hub_reachable

REQUIRED_COLUMNS = ("instruction", "input", "output")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass
class LoadedData:
    rows: list[dict]  # {"instruction", "input", "output"} strings, in source order
    source: str  # what was actually read (a path or a Hub id)
    kind: str  # local | hub
    total_rows: int  # rows in the source before --limit
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> source row numbers (0-based)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for r in self.rows:
            h.update(json.dumps([r[c] for c in REQUIRED_COLUMNS], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


def load_rows(source: str, fallback: str | None = None, limit: int | None = None) -> LoadedData:
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        raw, kind, used = _read_local(path), "local", str(path)
    else:
        raw, kind, used = _read_hub(source, fallback)
    total = len(raw)
    if limit is not None:
        raw = raw[:limit]
    rows, dropped = _validate(raw, used)
    if not rows:
        raise DataError(f"{used}: no usable rows (dropped: {_describe(dropped)})")
    return LoadedData(rows=rows, source=used, kind=kind, total_rows=total, dropped=dropped)


def _describe(dropped: dict[str, list[int]]) -> str:
    return "; ".join(f"{len(v)} {k} (rows {', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
                     for k, v in dropped.items()) or "none"


def _read_local(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    except DataError:
        raise
    except Exception as e:  # pyarrow / csv errors: one line naming the file
        raise DataError(f"cannot read {path}: {first_line(e)}") from None
    raise DataError(f"unsupported data file type {suffix!r} for {path}; use .json, .jsonl, .parquet or .csv")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        # Many ".json" datasets are JSON Lines in disguise.
        try:
            return _read_jsonl(path)
        except DataError:
            raise DataError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON array of objects with columns {', '.join(REQUIRED_COLUMNS)}")
    return data


def _read_hub(dataset_id: str, fallback: str | None) -> tuple[list[dict], str, str]:
    if not hub_reachable():
        if fallback:
            if not Path(fallback).expanduser().is_file():
                raise DataError(
                    f"the Hugging Face Hub is unreachable and the fallback file {fallback} (data.fallback, relative "
                    f"to the current directory) does not exist; pass a local file: --data path/to/file.jsonl"
                )
            print(f"codelora: the Hugging Face Hub is unreachable; using the local fallback {fallback}", file=sys.stderr)
            return _read_local(Path(fallback).expanduser()), "local", fallback
        force_offline()  # a dataset already in the local Hugging Face cache still loads
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except (ConnectionError, OSError) as e:
        if not hub_reachable():
            raise DataError(
                f"the Hugging Face Hub is unreachable, so dataset '{dataset_id}' cannot be downloaded; pass a local "
                f"file instead: --data path/to/file.jsonl (JSON, JSONL, Parquet or CSV with columns "
                f"{', '.join(REQUIRED_COLUMNS)})"
            ) from None
        raise DataError(f"cannot load dataset '{dataset_id}': {first_line(e)}") from None
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"cannot load dataset '{dataset_id}': {first_line(e)}") from None
    return ds.to_list(), "hub", dataset_id


def _validate(raw: list[dict], where: str) -> tuple[list[dict], dict[str, list[int]]]:
    present = set().union(*(r.keys() for r in raw)) if raw else set()
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise DataError(
            f"{where}: missing required column(s) {', '.join(missing)}; "
            f"expected columns {', '.join(REQUIRED_COLUMNS)} (text is optional)"
        )
    rows, dropped = [], {}
    for i, r in enumerate(raw):
        reason = None
        values = {c: r.get(c) for c in REQUIRED_COLUMNS}
        if values["input"] is None:
            values["input"] = ""  # an absent input means "no input", as in the source dataset
        if not all(isinstance(v, str) for v in values.values()):
            reason = "non-text value"
        elif not values["instruction"].strip():
            reason = "empty instruction"
        elif not values["output"].strip():
            reason = "empty output"
        if reason:
            dropped.setdefault(reason, []).append(i)
        else:
            rows.append(values)
    if dropped:
        print(f"codelora: dropped rows of {where}: {_describe(dropped)}", file=sys.stderr)
    return rows, dropped


def count_reasons(dropped: dict[str, list[int]]) -> dict[str, int]:
    return {k: len(v) for k, v in dropped.items()}
