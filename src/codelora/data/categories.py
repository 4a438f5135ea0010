"""Keyword task categories of an instruction (data.categories): the EDA report counts them, and the
built-in classification task labels each row with its first one.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9']+")


def categorize(instruction: str, categories: dict[str, list[str]]) -> list[str]:
    """The categories whose keywords occur in `instruction` (a phrase as a substring, a single word as a
    whole word), in config order; ["other"] when none does."""
    text = instruction.lower()
    words = set(WORD.findall(text))
    hits = [name for name, keys in categories.items()
            if any((k in text) if " " in k else (k in words) for k in keys)]
    return hits or ["other"]
