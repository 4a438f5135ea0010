"""Seeded train/validation/test split (8:1:1 by default).

This is a plain random split of row positions; the data issue makes it leakage-free by grouping
duplicates and near-duplicates into the same split.
"""

from __future__ import annotations

import random

from codelora.errors import DataError


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    if n < 3:
        raise DataError(f"need at least 3 usable rows for a train/validation/test split, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(f"{n} rows leave no training rows after {n_val} validation and {n_test} test rows; "
                        f"use more rows or smaller data.val_fraction / data.test_fraction")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {"train": sorted(train), "validation": sorted(val), "test": sorted(test)}
