"""Read records from a Hub dataset, a local JSON/JSONL/Parquet/CSV file, or a prepared directory.

Reading never drops silently: a JSON Lines line that is not valid JSON or not UTF-8 is recorded
as a drop with its line number, and the validation stage (validate.py) decides the rest. A file
that cannot be read at all, or lacks a required column everywhere, is an error.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from codelora.errors import DataError, first_line
from codelora.hub import force_offline, hub_reachable
from codelora.io.files import describe_os_error
from codelora.io.rundir import RunDir

REQUIRED_COLUMNS = ("instruction", "input", "output")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
PREPARED_SPLITS = ("train", "validation", "test")


@dataclass
class RawRecords:
    records: list[dict]  # as read, in source order
    refs: list[int]  # each record's line number (JSONL) or 1-based row number (other sources)
    source: str  # what was actually read (a path or a Hub id)
    kind: str  # local | hub | prepared
    ref_kind: str = "row"  # "line" for JSON Lines
    drops: dict[str, list[int]] = field(default_factory=dict)  # reason -> refs, from reading
    splits: dict[str, list[int]] | None = None  # a prepared directory's own splits (record positions)

    @property
    def total(self) -> int:
        return len(self.records) + sum(len(v) for v in self.drops.values())


def is_prepared_dir(path: Path) -> bool:
    return path.is_dir() and RunDir(path).is_complete() and all(
        (path / f"{s}.jsonl").is_file() for s in PREPARED_SPLITS)


def is_hub_dataset(source: str) -> bool:
    """Whether `source` names a Hub dataset rather than a local file or prepared directory."""
    path = Path(source).expanduser()
    return not (path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")))


def read_source(source: str, fallback: str | None = None, limit: int | None = None,
                required: tuple[str, ...] = REQUIRED_COLUMNS) -> RawRecords:
    """Read `source`; `required` names the columns that must appear in some record (() checks none)."""
    path = Path(source).expanduser()
    if is_prepared_dir(path):
        raw = _read_prepared(path)
    elif not is_hub_dataset(source):
        raw = _read_local(path)
    else:
        raw = _read_hub(source, fallback)
    if limit is not None:
        _apply_limit(raw, limit)
    present = set().union(*(r.keys() for r in raw.records)) if raw.records else set()
    missing = [c for c in required if c not in present]
    if missing:
        note = " (text is optional)" if tuple(required) == REQUIRED_COLUMNS else ""
        raise DataError(f"{raw.source}: missing required column(s) {', '.join(missing)}; "
                        f"expected columns {', '.join(required)}{note}")
    return raw


def _apply_limit(raw: RawRecords, limit: int) -> None:
    """Keep the first `limit` records of the source (by position in the file, drops included)."""
    if raw.splits is not None:
        raise DataError(f"{raw.source} is a prepared directory: its splits are fixed, so --limit does not apply")
    order = sorted([(ref, "row", i) for i, ref in enumerate(raw.refs)] +
                   [(ref, reason, -1) for reason, refs in raw.drops.items() for ref in refs])[:limit]
    keep = {i for _, kind, i in order if kind == "row"}
    cut = {ref for ref, kind, _ in order}
    raw.records = [r for i, r in enumerate(raw.records) if i in keep]
    raw.refs = [ref for i, ref in enumerate(raw.refs) if i in keep]
    raw.drops = {k: [r for r in v if r in cut] for k, v in raw.drops.items()}
    raw.drops = {k: v for k, v in raw.drops.items() if v}


def _read_local(path: Path) -> RawRecords:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"unsupported data file type {suffix!r} for {path}; use .json, .jsonl, .parquet or .csv")
    try:
        return readers[suffix](path)
    except OSError as e:  # permissions, a directory, a vanished file: the reader's own errors say more
        raise DataError(f"cannot read {path}: {describe_os_error(e)}") from None


def _read_jsonl(path: Path) -> RawRecords:
    raw = RawRecords([], [], str(path), "local", ref_kind="line")
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError:
                raw.drops.setdefault("non-UTF-8 bytes", []).append(lineno)
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep to parse
                raw.drops.setdefault("malformed JSON", []).append(lineno)
                continue
            if not isinstance(obj, dict):
                raw.drops.setdefault("malformed JSON", []).append(lineno)
                continue
            raw.records.append(obj)
            raw.refs.append(lineno)
    return raw


def _read_json(path: Path) -> RawRecords:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte {e.start}); JSON Lines files can drop bad lines instead") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{") and "\n" in text.strip():
            return _read_jsonl(path)  # many ".json" datasets are JSON Lines in disguise
        raise DataError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects with columns {', '.join(REQUIRED_COLUMNS)}")
    raw = RawRecords([], [], str(path), "local")
    for i, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            raw.records.append(obj)
            raw.refs.append(i)
        else:
            raw.drops.setdefault("malformed JSON", []).append(i)
    return raw


def _read_csv(path: Path) -> RawRecords:
    raw = RawRecords([], [], str(path), "local")
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is dropped, not the file
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            for i, row in enumerate(reader, 1):
                if any(isinstance(v, str) and has_surrogates(v) for v in row.values()):
                    raw.drops.setdefault("non-UTF-8 bytes", []).append(i)
                else:
                    raw.records.append(row)
                    raw.refs.append(i)
        except csv.Error as e:  # e.g. a field over the csv size limit: the reader cannot go on
            raise DataError(f"{path}: malformed CSV near line {reader.line_num + 1} ({e})") from None
    return raw


def _read_parquet(path: Path) -> RawRecords:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except pyarrow.ArrowException as e:
        raise DataError(f"cannot read {path} as Parquet: {first_line(e)}") from None
    return RawRecords(rows, list(range(1, len(rows) + 1)), str(path), "local")


def has_surrogates(s: str) -> bool:
    """Lone surrogates: undecodable bytes (surrogateescape) or "\\udc80"-style JSON escapes."""
    return any("\ud800" <= ch <= "\udfff" for ch in s)


def _read_prepared(path: Path) -> RawRecords:
    raw = RawRecords([], [], str(path), "prepared", splits={})
    for split in PREPARED_SPLITS:
        part = _read_jsonl(path / f"{split}.jsonl")
        if part.drops:
            raise DataError(f"{path / (split + '.jsonl')} is damaged ({', '.join(part.drops)}); run codelora data prepare again")
        start = len(raw.records)
        raw.records += part.records
        raw.splits[split] = list(range(start, len(raw.records)))
    raw.refs = list(range(1, len(raw.records) + 1))
    return raw


def _read_hub(dataset_id: str, fallback: str | None) -> RawRecords:
    if not hub_reachable():
        if fallback:
            if not Path(fallback).expanduser().is_file():
                raise DataError(
                    f"the Hugging Face Hub is unreachable and the fallback file {fallback} (data.fallback, relative "
                    f"to the current directory) does not exist; pass a local file: --data path/to/file.jsonl"
                )
            print(f"codelora: the Hugging Face Hub is unreachable; using the local fallback {fallback}", file=sys.stderr)
            return _read_local(Path(fallback).expanduser())
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
    rows = ds.to_list()
    return RawRecords(rows, list(range(1, len(rows) + 1)), dataset_id, "hub")
