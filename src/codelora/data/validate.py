"""Schema validation: which records can be used, and why each other one cannot.

Every dropped record is kept in `drops` under its reason with its line/row number; nothing is
dropped silently. Reasons: malformed JSON, non-UTF-8 bytes (from reading), missing field, wrong
type, empty instruction, empty output, over length limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codelora.console import progress, say
from codelora.data.load import REQUIRED_COLUMNS, RawRecords, has_surrogates
from codelora.errors import DataError


@dataclass
class Rows:
    rows: list[dict]  # instruction/input/output strings (+ text when present) and "ref"
    source: str
    kind: str
    ref_kind: str
    total: int  # records in the source (after --limit), usable or not
    drops: dict[str, list[int]] = field(default_factory=dict)  # reason -> refs
    splits: dict[str, list[int]] | None = None  # fixed splits of a prepared directory (positions in rows)

    def drop_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.drops.items()}


def select_records(raw: RawRecords, to_row) -> Rows:
    """Keep each record that `to_row(rec)` turns into a row (it returns (row, None) or (None, reason));
    every other record becomes a drop under its reason. A prepared directory's splits are re-indexed."""
    drops = {k: list(v) for k, v in raw.drops.items()}
    rows, position = [], {}
    records = progress(zip(raw.records, raw.refs), total=len(raw.records), desc="validating", unit="row")
    for i, (rec, ref) in enumerate(records):
        row, reason = to_row(rec)
        if reason:
            drops.setdefault(reason, []).append(ref)
            continue
        row["ref"] = ref
        position[i] = len(rows)
        rows.append(row)
    splits = None
    if raw.splits is not None:
        splits = {k: [position[i] for i in v if i in position] for k, v in raw.splits.items()}
    for refs in drops.values():
        refs.sort()
    return Rows(rows, raw.source, raw.kind, raw.ref_kind, raw.total, drops, splits)


def validate_records(raw: RawRecords, max_chars: int) -> Rows:
    def to_row(rec: dict):
        reason = _problem(rec, max_chars)
        if reason:
            return None, reason
        row = {c: rec[c] if rec[c] is not None else "" for c in REQUIRED_COLUMNS}
        if isinstance(rec.get("text"), str):
            row["text"] = rec["text"]
        return row, None

    return select_records(raw, to_row)


def instruction_rows(raw: RawRecords, max_chars: int, max_drop_fraction: float | None) -> Rows:
    """The validation stage of instruction/input/output data: validate, say what was dropped, check
    that enough is usable (`max_drop_fraction` None: no limit, as a report describes bad data too)."""
    rows = validate_records(raw, max_chars)
    if rows.drops:
        say(f"{rows.source}: dropped in validation: {describe_drops(rows.drops, rows.ref_kind)}")
    return usable(rows, max_drop_fraction)


def _problem(rec: dict, max_chars: int) -> str | None:
    if any(c not in rec for c in REQUIRED_COLUMNS):
        return "missing field"
    if rec["input"] is not None and not isinstance(rec["input"], str):  # null input means "no input"
        return "wrong type"
    if not isinstance(rec["instruction"], str) or not isinstance(rec["output"], str):
        return "wrong type"
    if any(has_surrogates(rec[c] or "") for c in REQUIRED_COLUMNS):
        return "non-UTF-8 bytes"  # lone surrogates, e.g. "\udc80" escapes in JSON: not encodable text
    if not rec["instruction"].strip():
        return "empty instruction"
    if not rec["output"].strip():
        return "empty output"
    if sum(len(rec[c] or "") for c in REQUIRED_COLUMNS) > max_chars:
        return "over length limit"
    return None


def check_drop_fraction(rows: Rows, max_fraction: float) -> None:
    """Fail when validation dropped more than `max_fraction` of the records: the file is likely wrong."""
    dropped = sum(len(v) for v in rows.drops.values())
    if rows.total and dropped / rows.total > max_fraction:
        detail = "; ".join(f"{len(v)} {k}" for k, v in rows.drops.items())
        raise DataError(f"{rows.source}: {dropped} of {rows.total} rows failed validation ({detail}), more than "
                        f"data.max_drop_fraction={max_fraction:g}; fix the file or raise the threshold")


def usable(rows: Rows, max_drop_fraction: float | None) -> Rows:
    """`rows`, after checking the share dropped (unless `max_drop_fraction` is None) and that any is left."""
    if max_drop_fraction is not None:
        check_drop_fraction(rows, max_drop_fraction)
    if not rows.rows:
        raise DataError(f"{rows.source}: no usable rows")
    return rows


def describe_drops(drops: dict[str, list[int]], ref_kind: str = "row") -> str:
    return "; ".join(f"{len(v)} {k} ({ref_kind}s {', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
                     for k, v in drops.items() if v) or "none"
