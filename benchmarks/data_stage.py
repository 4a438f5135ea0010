"""Benchmark: `data report` and `data prepare` on a dataset the size of python-codes-25k.

The full dataset is not reachable here, so the benchmark builds 24,813 rows from a real head
of it (each row an edited copy, so the texts differ), or from a file you pass. Target: the
report under 30 s on 2 cores.

    python benchmarks/data_stage.py [--data ../shared/data/python-codes-25k.head356.jsonl] [--rows 24813]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from codelora.config_parse import parse_config
from codelora.data.prepare import data_prepare, data_report
from codelora.models.sources import load_tokenizer, resolve_model

DEFAULT_HEAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "python-codes-25k.head356.jsonl"


def synthesize(head: Path, n: int, out: Path) -> None:
    rows = [json.loads(x) for x in head.read_text(encoding="utf-8").splitlines() if x.strip()]
    rng = random.Random(0)
    with open(out, "w", encoding="utf-8") as f:
        for k in range(n):
            r = rows[k % len(rows)]
            tag = f"{k}_{rng.randint(0, 10**6)}"
            row = {**r, "instruction": f"{r['instruction']} (variant {tag})",
                   "output": r["output"].replace("print(", f"print_{tag}(")}
            row["text"] = f"{row['instruction']} {row['input']} {row['output']}"
            f.write(json.dumps(row) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_HEAD), help="rows to copy from (JSONL)")
    ap.add_argument("--rows", type=int, default=24813)
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"no data file {args.data}; pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rows.jsonl"
        synthesize(Path(args.data), args.rows, src)
        cfg = parse_config({"data": {"source": str(src)}})
        t0 = time.perf_counter()
        stats = data_report(cfg, Path(tmp) / "report", load_tokenizer(resolve_model(cfg.model)))
        report_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = data_prepare(cfg, Path(tmp) / "prepared")
        prepare_s = time.perf_counter() - t0
    result = {
        "rows": stats["rows"]["valid"],
        "report_s": round(report_s, 2),
        "prepare_s": round(prepare_s, 2),
        "report_target_s": 30,
        "grouped_rows": manifest["split_report"]["grouped_rows"],
        "cross_split_pairs": sum(manifest["split_report"]["cross_split_pairs"].values()),
    }
    print(f"| step | seconds |\n| --- | ---: |\n| data report ({result['rows']:,} rows) | {report_s:.1f} |\n"
          f"| data prepare | {prepare_s:.1f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
