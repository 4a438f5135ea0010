"""`codelora data report`: an EDA report of a dataset (report.md, stats.json, PNG charts).

Figures are computed on the rows that pass validation, before cleaning, except where a figure
says "after cleaning".
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from pathlib import Path

import numpy as np

from codelora.config import DataConfig
from codelora.data.categories import WORD, categorize
from codelora.data.clean import clean_rows, extract_code
from codelora.data.validate import Rows
from codelora.io.figures import pyplot, save_figure

COLUMNS = ("instruction", "input", "output", "text")
TOP = 15


def describe(values) -> dict:
    """count, mean, std (sample, as pandas), min, quartiles (linear), max."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"count": 0}
    q1, q2, q3 = np.percentile(a, [25, 50, 75])
    return {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "25%": float(q1), "50%": float(q2), "75%": float(q3), "max": float(a.max())}


def first_word(text: str) -> str | None:
    m = WORD.search(text.lower())
    return m.group(0) if m else None


@functools.lru_cache(maxsize=None)
def parses(code: str) -> bool:
    """Whether `code` is valid Python (cached: cleaning often leaves the code unchanged)."""
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts in one batched call of the Rust tokenizer (all cores, no Python per text)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
    return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def code_lines(output: str) -> int:
    return sum(1 for line in extract_code(output).splitlines() if line.strip())


def compute_stats(src: Rows, cfg: DataConfig, tokenizer=None) -> tuple[dict, dict[str, list[int]]]:
    """Returns (stats, token lengths per column); the lengths feed the charts."""
    rows = src.rows
    cols = [c for c in COLUMNS if c != "text" or any("text" in r for r in rows)]
    stats: dict = {
        "source": src.source,
        "rows": {"read": src.total, "valid": len(rows), "dropped": src.drop_counts(),
                 "dropped_refs": src.drops, "ref_kind": src.ref_kind},
        "unique": {c: len({r.get(c) for r in rows if c in r}) for c in cols},
        "chars": {c: describe([len(r[c]) for r in rows if c in r]) for c in cols},
    }
    tok_lens: dict[str, list[int]] = {}
    if tokenizer is not None:
        tok_lens = {c: token_lengths(tokenizer, [r[c] for r in rows if c in r]) for c in cols}
        stats["tokens"] = {c: describe(v) for c, v in tok_lens.items()}
    for c in ("instruction", "input"):
        words = [first_word(r[c]) for r in rows]
        stats.setdefault("first_words", {})[c] = Counter(w for w in words if w).most_common(TOP)
    stats["empty_input_rows"] = sum(1 for r in rows if not r["input"].strip())
    cat_counts = Counter(cat for r in rows for cat in categorize(r["instruction"], cfg.categories))
    stats["categories"] = {name: cat_counts.get(name, 0) for name in [*cfg.categories, "other"]}
    stats["lines_per_output"] = describe([code_lines(r["output"]) for r in rows])
    cleaned, clean_drops = clean_rows(rows, cfg.clean)
    n = max(len(rows), 1)
    stats["ast_parse"] = {
        "raw_output": sum(parses(r["output"]) for r in rows) / n,
        "code_block_before_cleaning": sum(parses(extract_code(r["output"])) for r in rows) / n,
        "code_block_after_cleaning": sum(parses(extract_code(r["output"])) for r in cleaned) / max(len(cleaned), 1),
        "rows_after_cleaning": len(cleaned),
        "cleaning": {k: v for k, v in vars(cfg.clean).items()},
        "cleaning_drops": {k: len(v) for k, v in clean_drops.items()},
        "cleaning_drop_refs": clean_drops,
    }
    with_text = [r for r in rows if "text" in r]
    stats["text_equals_concat"] = {
        "rows_with_text": len(with_text),
        "matches": sum(r["text"] == f"{r['instruction']} {r['input']} {r['output']}" for r in with_text),
    }
    return stats, tok_lens


# --- charts ---------------------------------------------------------------------------------


def _hist_grid(src_rows: list[dict], lengths_of, title: str, unit: str, path: Path, cols) -> None:
    fig, axes = pyplot().subplots(1, len(cols), figsize=(4 * len(cols), 3.4), dpi=110)
    for ax, c in zip(np.atleast_1d(axes), cols):
        ax.hist(lengths_of(c), bins=40, color="tab:blue", alpha=0.85)
        ax.set_title(c)
        ax.set_xlabel(unit)
        ax.set_ylabel("rows")
    fig.suptitle(title)
    save_figure(fig, path)


def _bars(ax, pairs, title):
    labels = [p[0] for p in pairs][::-1]
    ax.barh(labels, [p[1] for p in pairs][::-1], color="tab:green")
    ax.set_title(title)
    ax.set_xlabel("rows")


def write_charts(src: Rows, stats: dict, out: Path, tok_lens: dict[str, list[int]]) -> list[tuple[str, str]]:
    """Write the PNG charts; returns (file name, title) pairs."""
    plt = pyplot()
    rows = src.rows
    cols = [c for c in COLUMNS if c in stats["chars"]]
    charts = []
    title = "Character length per column"
    _hist_grid(rows, lambda c: [len(r[c]) for r in rows if c in r], title, "characters", out / "chars_hist.png", cols)
    charts.append(("chars_hist.png", title))
    if tok_lens:
        title = "Token length per column"
        _hist_grid(rows, lambda c: tok_lens[c], title, "tokens", out / "tokens_hist.png", cols)
        charts.append(("tokens_hist.png", title))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, c in zip(axes, ("instruction", "input")):
        _bars(ax, stats["first_words"][c], f"Top first words of {c}")
    save_figure(fig, out / "first_words.png")
    charts.append(("first_words.png", "Top first words of instruction and input"))

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    _bars(ax, list(stats["categories"].items()), "Keyword task categories of instructions")
    save_figure(fig, out / "categories.png")
    charts.append(("categories.png", "Keyword task categories of instructions"))

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    counts = [code_lines(r["output"]) for r in rows]
    ax.hist(counts, bins=range(0, max(counts, default=0) + 2), color="tab:purple")
    ax.set_title("Lines of code per output snippet")
    ax.set_xlabel("non-empty lines")
    ax.set_ylabel("rows")
    save_figure(fig, out / "lines_per_output.png")
    charts.append(("lines_per_output.png", "Lines of code per output snippet"))
    return charts


# --- markdown -------------------------------------------------------------------------------


def _fmt(v) -> str:
    return f"{v:,.1f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v):,}"


def render_report(stats: dict, charts: list[tuple[str, str]]) -> str:
    r = stats["rows"]
    lines = [f"# Data report: {stats['source']}", "",
             f"Rows read: {r['read']:,}; valid: {r['valid']:,}; dropped in validation: {sum(r['dropped'].values()):,}.", ""]
    if r["dropped"]:
        lines += ["| reason | rows | " + r["ref_kind"] + "s |", "| --- | ---: | --- |"]
        for k, refs in r["dropped_refs"].items():
            shown = ", ".join(map(str, refs[:20])) + (" ..." if len(refs) > 20 else "")
            lines.append(f"| {k} | {len(refs)} | {shown} |")
        lines.append("")
    lines += ["## Unique values", "", "| column | unique |", "| --- | ---: |"]
    lines += [f"| {c} | {n:,} |" for c, n in stats["unique"].items()]
    for key, unit in (("chars", "characters"), ("tokens", "tokens")):
        if key not in stats:
            continue
        lines += ["", f"## Length in {unit}", "", "| column | count | mean | std | min | 25% | 50% | 75% | max |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c, d in stats[key].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(d[k]) for k in
                                                 ("count", "mean", "std", "min", "25%", "50%", "75%", "max")) + " |")
    lines += ["", "## Top first words", ""]
    for c in ("instruction", "input"):
        lines.append(f"- {c}: " + ", ".join(f"{w} ({n})" for w, n in stats["first_words"][c]))
    lines.append(f"- rows with an empty input: {stats['empty_input_rows']:,}")
    lines += ["", "## Keyword task categories (a row may count in several)", "", "| category | rows |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,} |" for k, v in stats["categories"].items()]
    d = stats["lines_per_output"]
    lines += ["", "## Code", "", f"Lines per output snippet (non-empty lines of the code block): mean {d['mean']:.1f}, "
              f"median {d['50%']:.0f}, max {d['max']:.0f}.", ""]
    a = stats["ast_parse"]
    lines += ["| outputs that parse with ast.parse | share |", "| --- | ---: |",
              f"| raw output (fences included) | {a['raw_output']:.1%} |",
              f"| code block, before cleaning | {a['code_block_before_cleaning']:.1%} |",
              f"| code block, after cleaning ({a['rows_after_cleaning']:,} rows) | {a['code_block_after_cleaning']:.1%} |",
              "", "Cleaning: " + ", ".join(f"{k}={v}" for k, v in a["cleaning"].items()) + "; dropped by cleaning: "
              + (", ".join(f"{v} {k}" for k, v in a["cleaning_drops"].items()) or "none") + "."]
    for k, refs in a["cleaning_drop_refs"].items():
        lines.append(f"- {k}: {r['ref_kind']}s {', '.join(map(str, refs[:20]))}{' ...' if len(refs) > 20 else ''}")
    t = stats["text_equals_concat"]
    if t["rows_with_text"]:
        lines += ["", f"Rows whose `text` equals instruction + ' ' + input + ' ' + output: {t['matches']:,} of "
                      f"{t['rows_with_text']:,} ({t['matches'] / t['rows_with_text']:.1%})."]
    lines += ["", "## Charts", ""]
    lines += [f"![{title}]({name})" for name, title in charts]
    return "\n".join(lines) + "\n"
