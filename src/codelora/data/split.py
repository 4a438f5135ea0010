"""Seeded, leakage-free train/validation/test split (8:1:1 by default).

Rows are split as groups (dedup.py): a group of related rows goes to one split whole, so no
exact or near duplicate of a test row is trained on. Groups are shuffled with the seed and
filled into test, then validation, up to their target sizes; the rest trains.
"""

from __future__ import annotations

import random

from codelora.errors import DataError

SPLITS = ("train", "validation", "test")


def split_groups(groups: list[list[int]], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[int]]:
    n = sum(len(g) for g in groups)
    if n < 3:
        raise DataError(f"need at least 3 usable rows for a train/validation/test split, got {n}")
    targets = {"test": max(1, round(n * test_fraction)), "validation": max(1, round(n * val_fraction))}
    if n - sum(targets.values()) < 1:
        raise DataError(f"{n} rows leave no training rows after {targets['validation']} validation and "
                        f"{targets['test']} test rows; use more rows or smaller data.val_fraction / data.test_fraction")
    order = sorted(groups, key=min)  # a canonical order before the seeded shuffle
    random.Random(seed).shuffle(order)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for group in order:
        for split in ("test", "validation"):
            if len(out[split]) + len(group) <= targets[split]:
                out[split] += group
                break
        else:
            out["train"] += group
    if not out["test"] or not out["validation"] or not out["train"]:
        raise DataError(f"the {n} rows form {len(groups)} groups of duplicates too large to fill all three splits; "
                        f"use more rows or a higher data.near_duplicate_threshold")
    return {s: sorted(v) for s, v in out.items()}
