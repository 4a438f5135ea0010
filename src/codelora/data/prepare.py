"""`codelora data report` and `codelora data prepare`, callable from Python too."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from codelora.config import RunConfig
from codelora.console import say
from codelora.data.pipeline import curate, load_data
from codelora.data.report import compute_stats, render_report, write_charts
from codelora.data.split import SPLITS
from codelora.io.files import sha256_file, write_json_atomic, write_text_atomic
from codelora.io.rundir import MANIFEST, REPORT_MD, staged_run_dir


def data_report(cfg: RunConfig, out: str | Path, tokenizer, overwrite: bool = False) -> dict:
    """Describe the data of `cfg.data`; token lengths are counted with `tokenizer` (cfg.model's)."""
    src = load_data(cfg.data, enforce_drop_limit=False)  # a report describes bad data too
    with staged_run_dir(out, overwrite) as d:
        stats, tok_lens = compute_stats(src, cfg.data, tokenizer)
        stats["tokenizer"] = cfg.model.name
        charts = write_charts(src, stats, d, tok_lens)
        write_json_atomic(d / "stats.json", stats)
        write_text_atomic(d / REPORT_MD, render_report(stats, charts))
    say(f"wrote {out}/report.md, stats.json and {len(charts)} charts")
    return stats


def render_split_report(rep: dict, drops: dict[str, list[int]], ref_kind: str) -> str:
    lines = ["# Split report", "",
             f"{rep['rows']:,} rows in {rep['groups']:,} groups; {rep['grouped_rows']:,} rows share a group with "
             f"a related row (largest group: {rep['largest_group']}). Related means: same normalised instruction, "
             f"same normalised output, or near-duplicate text (Jaccard >= {rep['near_duplicate_threshold']} over "
             f"token 3-shingles). A group never spans two splits.", "",
             "| relation | pairs found | pairs across splits |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:,} | {rep['cross_split_pairs'][k]} |" for k, v in rep["related_pairs"].items()]
    lines.append(f"| near duplicate answer (audit only: answers' word 3-shingles) | not grouped | "
                 f"{rep['cross_split_pairs']['near duplicate answer']} |")
    if rep["cross_split_near_duplicates"]:
        lines += ["", "Near-duplicate pairs across splits (the audit's):", ""]
        lines += [f"- {ref_kind} {p['train']} (train) ~ {ref_kind} {p.get('validation', p.get('test'))} "
                  f"({'validation' if 'validation' in p else 'test'}): {p['relation']}, Jaccard {p['jaccard']}"
                  for p in rep["cross_split_near_duplicates"]]
    lines += ["", "| split | rows |", "| --- | ---: |"] + [f"| {s} | {n:,} |" for s, n in rep["split_sizes"].items()]
    if drops:
        lines += ["", f"| dropped | rows | {ref_kind}s |", "| --- | ---: | --- |"]
        lines += [f"| {k} | {len(v)} | {', '.join(map(str, v[:20]))}{' ...' if len(v) > 20 else ''} |"
                  for k, v in drops.items()]
    return "\n".join(lines) + "\n"


def data_prepare(cfg: RunConfig, out: str | Path, overwrite: bool = False) -> dict:
    src = load_data(cfg.data)
    cur = curate(src, cfg.data, cfg.seed)
    with staged_run_dir(out, overwrite) as d:
        files = {}
        for split in SPLITS:
            path = d / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for i in cur.splits[split]:
                    r = cur.rows[i]
                    f.write(json.dumps({"instruction": r["instruction"], "input": r["input"], "output": r["output"],
                                        "source_row": r["ref"]}, ensure_ascii=False) + "\n")
            files[split] = {"rows": len(cur.splits[split]), "sha256": sha256_file(path)}
        # no timestamps: the same input and config give an identical directory
        manifest = {
            "source": src.source,
            "rows_read": src.total,
            "rows_kept": len(cur.rows),
            "ref_kind": src.ref_kind,
            "dropped": cur.drops,
            "splits": files,
            "split_report": cur.split_report,
            "config": {"seed": cfg.seed, "data": asdict(cfg.data)},
        }
        write_json_atomic(d / MANIFEST, manifest)
        write_text_atomic(d / "split_report.md", render_split_report(cur.split_report, cur.drops, src.ref_kind))
    sizes = cur.split_report["split_sizes"]
    say(f"wrote {out}: train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']} rows; "
        f"{cur.split_report['grouped_rows']} related rows grouped, cross-split pairs: "
        f"{sum(cur.split_report['cross_split_pairs'].values())}")
    return manifest
