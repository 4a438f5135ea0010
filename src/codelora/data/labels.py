"""Rows for the sequence-classification task: a text and its label.

Two input shapes are accepted:

- a labeled file: records with `text` and `label` columns (label a string or an integer);
- the built-in task: instruction/input/output records (the code dataset), labeled with the
  keyword task category of the instruction (data.categories; the first matching category in
  config order, else "other"). The text is the instruction alone, so the label is not
  trivially readable from the answer.

As in validate.py, nothing is dropped silently: each unusable record is kept in `drops` under
its reason with its line/row number. The split keeps rows with the same normalized text in one
split, so no text seen in training is scored in validation or test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from codelora.config import DataConfig
from codelora.data.categories import categorize
from codelora.data.load import REQUIRED_COLUMNS, RawRecords, has_surrogates
from codelora.data.split import SPLITS, split_groups
from codelora.data.validate import Rows, select_records, validate_records
from codelora.errors import DataError

LABEL_COLUMNS = ("text", "label")


@dataclass
class Labeled:
    rows: Rows  # rows are {"text", "label", "ref"}; label is always a str
    builtin: bool  # True: labels derived from instruction categories; False: a labeled file


def category_label(instruction: str, categories: dict[str, list[str]]) -> str:
    """The first category (in config order) whose keywords match, else "other": one label per row."""
    return categorize(instruction, categories)[0]  # categorize gives ["other"] when nothing matches


def labeled_rows(raw: RawRecords, cfg: DataConfig) -> Labeled:
    """The validation stage of classification data: text/label rows of either shape (read with no
    column check: which columns are required depends on the shape found)."""
    builtin = bool(raw.records) and not any("label" in r for r in raw.records)
    if not builtin:
        return Labeled(_labeled_rows(raw, cfg.max_chars), builtin)
    present = set().union(*(r.keys() for r in raw.records))
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise DataError(f"{raw.source}: no label column and missing {', '.join(missing)}; classification data needs "
                        f"columns {' and '.join(LABEL_COLUMNS)}, or {'/'.join(REQUIRED_COLUMNS)} for the built-in "
                        f"task-category labels")
    valid = validate_records(raw, cfg.max_chars)
    valid.rows = [{"text": r["instruction"].strip(), "label": category_label(r["instruction"], cfg.categories),
                   "ref": r["ref"]} for r in valid.rows]  # one row per validated row: fixed splits stay valid
    return Labeled(valid, builtin)


def _labeled_rows(raw: RawRecords, max_chars: int) -> Rows:
    def to_row(rec: dict):
        text, label, reason = _text_and_label(rec, max_chars)
        return (None, reason) if reason else ({"text": text, "label": label}, None)

    return select_records(raw, to_row)


def _text_and_label(rec: dict, max_chars: int) -> tuple[str, str, str | None]:
    """(text, label, None) for a usable record, else ("", "", reason)."""
    text, label = rec.get("text"), rec.get("label")
    if text is None:
        return "", "", "missing text"
    if not isinstance(text, str):
        return "", "", "text not a string"
    if has_surrogates(text):
        return "", "", "non-UTF-8 bytes"
    if not text.strip():
        return "", "", "empty text"
    if label is None or (isinstance(label, str) and not label.strip()):
        return "", "", "missing label"  # an empty CSV cell reads as ""
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return "", "", "label not a string or integer"  # True would silently become class "True"
    if len(text.strip()) > max_chars:
        return "", "", "over length limit"
    # labels 1 and "1" are one class; surrounding spaces are formatting, not a different class
    return text.strip(), str(label).strip(), None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def split_labeled(rows: list[dict], cfg: DataConfig, seed: int) -> tuple[dict[str, list[int]], dict]:
    """Seeded train/validation/test split (positions in rows); rows with the same normalized text share a split."""
    by_text: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_text.setdefault(_norm(r["text"]), []).append(i)
    groups = list(by_text.values())
    splits = split_groups(groups, cfg.val_fraction, cfg.test_fraction, seed)
    # same text, different labels: kept (the split stays leak-free) but reported, as the labels are noisy
    conflicting = sum(len(g) for g in groups if len({rows[i]["label"] for i in g}) > 1)
    report = {
        "rows": len(rows),
        "groups": len(groups),
        "grouped_rows": sum(len(g) for g in groups if len(g) > 1),
        "conflicting_duplicates": conflicting,
        "split_sizes": {s: len(splits[s]) for s in SPLITS},
        "label_counts": {s: dict(sorted(Counter(rows[i]["label"] for i in splits[s]).items())) for s in SPLITS},
    }
    return splits, report


def label_names(rows: list[dict]) -> list[str]:
    """Distinct labels, sorted: label id i is label_names(rows)[i], the same on every run."""
    return sorted({r["label"] for r in rows})
