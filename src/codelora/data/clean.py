"""Cleaning steps, each switchable in `data.clean`: strip markdown fences, remove comments,
normalise whitespace, drop exact duplicates.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from codelora.config import CleanConfig
from codelora.console import progress

# an opening fence with an optional language, the body (possibly empty), a closing fence or the end
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:(?:\n|(?<=\n))[ \t]*```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """The first fenced code block's content, else the whole text."""
    m = FENCE.search(text)
    return m.group(2) if m else text


def strip_fences(text: str) -> str:
    """Replace every fenced block by its content (text outside the fences is kept)."""
    return FENCE.sub(lambda m: m.group(2), text).strip("\n")


def remove_comments(code: str) -> str | None:
    """Remove '#' comments using Python's tokenizer, so a '#' inside a string survives.

    Lines that held only a comment disappear. Returns None when the code cannot be tokenized
    (then it is left as it is)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    if any(tok.type == tokenize.ERRORTOKEN for tok in tokens):  # e.g. an unclosed string
        return None
    lines = io.StringIO(code).readlines()  # the tokenizer's notion of lines (not str.splitlines)
    comment_only = set()
    for tok in reversed(tokens):  # right to left, so earlier columns stay valid
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        line = lines[row - 1]
        before = line[:col]
        lines[row - 1] = before.rstrip() + ("\n" if line.endswith("\n") else "")
        if not before.strip():
            comment_only.add(row - 1)
    return "".join(line for i, line in enumerate(lines) if i not in comment_only)


def remove_answer_comments(text: str) -> str:
    if FENCE.search(text):
        def repl(m):
            cleaned = remove_comments(m.group(2))
            body = cleaned.rstrip("\n") if cleaned is not None else m.group(2)
            return m.group(0).replace(m.group(2), body, 1)

        return FENCE.sub(repl, text)
    # no fence: only an answer that is Python as a whole is treated as code ("C# or Python" is prose)
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return text
    cleaned = remove_comments(text)
    return cleaned if cleaned is not None else text


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def clean_rows(rows: list[dict], cfg: CleanConfig) -> tuple[list[dict], dict[str, list[int]]]:
    """Apply the enabled steps; returns (rows, drops) with drops keyed by reason -> refs."""
    out, drops, seen = [], {}, {}
    for row in progress(rows, desc="cleaning", unit="row"):  # comment removal tokenizes every answer
        r = dict(row)
        if cfg.remove_comments:
            r["output"] = remove_answer_comments(r["output"])
        if cfg.strip_fences:
            r["output"] = strip_fences(r["output"])
        if cfg.normalize_whitespace:
            for c in ("instruction", "input", "output"):
                r[c] = normalize_whitespace(r[c])
        if not r["output"].strip():
            drops.setdefault("empty after cleaning", []).append(r["ref"])
            continue
        if cfg.drop_duplicates:
            key = (r["instruction"], r["input"], r["output"])
            if key in seen:
                drops.setdefault("duplicate", []).append(r["ref"])
                continue
            seen[key] = r["ref"]
        out.append(r)
    return out, drops
