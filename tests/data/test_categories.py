"""Keyword task categories: a phrase key matches as a substring, a word key as a whole word."""

from codelora.data.categories import categorize

CATS = {"file io": ["file", "read"], "algorithm": ["sort", "binary search"], "web": ["url"]}


def test_every_matching_category_in_config_order_else_other():
    assert categorize("Read a FILE, then sort it", CATS) == ["file io", "algorithm"]
    assert categorize("Implement a binary search", CATS) == ["algorithm"]
    assert categorize("Sorting files", CATS) == ["other"]  # whole words only: no "sort", no "file"
    assert categorize("Say hello", CATS) == ["other"]
