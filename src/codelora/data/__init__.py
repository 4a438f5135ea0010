"""Rows in, model inputs out: reading, validation, cleaning, dedup-aware splits, prompt formats, the EDA report.

It receives a tokenizer; it never loads a model (the import contracts in pyproject.toml check that).
"""
