"""The data stage shared by `data prepare`, `train`, `run` and `eval`:

    read -> validate -> clean -> (decontaminate) -> group duplicates -> split -> encode

Each step reports what it dropped, by reason, with line/row numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from codelora.console import say
from codelora.config import DataConfig
from codelora.data.clean import clean_rows
from codelora.data.dedup import cross_split_audit, find_relations, groups_of
from codelora.data.load import REQUIRED_COLUMNS, read_source
from codelora.data.prompts import ClassFormat, Example, PromptFormat, Seq2SeqFormat
from codelora.data.split import SPLITS, split_groups
from codelora.data.validate import Rows, check_drop_fraction, validate_records
from codelora.errors import DataError



def content_sha256(rows: list[dict], columns: tuple[str, ...] = REQUIRED_COLUMNS) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r[c] for c in columns], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def describe_drops(drops: dict[str, list[int]], ref_kind: str = "row") -> str:
    return "; ".join(f"{len(v)} {k} ({ref_kind}s {', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
                     for k, v in drops.items() if v) or "none"


def load_data(cfg: DataConfig, enforce_drop_limit: bool = True) -> Rows:
    """Read and validate; fails fast (before any model load) on unusable data."""
    rows = validate_records(read_source(cfg.source, cfg.fallback, cfg.limit), cfg.max_chars)
    if rows.drops:
        say(f"{rows.source}: dropped in validation: {describe_drops(rows.drops, rows.ref_kind)}")
    if enforce_drop_limit:
        check_drop_fraction(rows, cfg.max_drop_fraction)
    if not rows.rows:
        raise DataError(f"{rows.source}: no usable rows")
    return rows


@dataclass
class Curated:
    source: Rows
    rows: list[dict]  # cleaned rows, in source order
    splits: dict[str, list[int]]  # split -> positions in rows
    drops: dict[str, list[int]] = field(default_factory=dict)  # every drop so far, reason -> refs
    split_report: dict = field(default_factory=dict)
    columns: tuple[str, ...] = REQUIRED_COLUMNS  # what a row's content is (text, label for classification)

    @property
    def sha256(self) -> str:
        return content_sha256(self.rows, self.columns)


def curate(src: Rows, cfg: DataConfig, seed: int) -> Curated:
    drops = {k: list(v) for k, v in src.drops.items()}
    if src.splits is not None:  # a prepared directory: cleaned and split already
        return Curated(src, src.rows, src.splits, drops, {"prepared": src.source})
    rows, clean_drops = clean_rows(src.rows, cfg.clean)
    drops.update(clean_drops)
    if cfg.decontaminate:
        from codelora.data.decontaminate import contaminated

        bad = set(contaminated(rows))
        if bad:
            drops["HumanEval overlap"] = [rows[i]["ref"] for i in sorted(bad)]
        rows = [r for i, r in enumerate(rows) if i not in bad]
    if not rows:
        raise DataError(f"{src.source}: no rows left after cleaning ({describe_drops(drops, src.ref_kind)})")
    relations = find_relations(rows, cfg.near_duplicate_threshold)
    groups = groups_of(len(rows), relations)
    splits = split_groups(groups, cfg.val_fraction, cfg.test_fraction, seed)
    pair_kinds = {"exact instruction": relations.exact_instruction, "exact output": relations.exact_output,
                  "near duplicate": relations.near_duplicate}
    report = {
        "rows": len(rows),
        "groups": len(groups),
        "grouped_rows": sum(len(g) for g in groups if len(g) > 1),
        "largest_group": max(len(g) for g in groups),
        "related_pairs": {k: len(v) for k, v in pair_kinds.items()},
        "cross_split_pairs": cross_split_audit(rows, splits, cfg.near_duplicate_threshold),
        "near_duplicate_threshold": cfg.near_duplicate_threshold,
        "split_sizes": {s: len(splits[s]) for s in SPLITS},
    }
    return Curated(src, rows, splits, drops, report)


def load_task_data(cfg: DataConfig, task: str) -> Rows:
    """load_data for the model's task: classification reads text/label rows (or derives them)."""
    if task != "classification":
        return load_data(cfg)
    from codelora.data.labels import load_labeled

    labeled = load_labeled(cfg)
    if labeled.builtin:
        say(f"{labeled.rows.source}: classification task built in: the keyword category of each instruction "
            f"(data.categories; 'other' when none matches)")
    return labeled.rows


def task_format(task: str, tokenizer, labels: list[str] | None = None):
    """How rows become model inputs for each model.task."""
    if task == "seq2seq":
        return Seq2SeqFormat(tokenizer)
    if task == "classification":
        return ClassFormat(tokenizer, labels)
    return PromptFormat(tokenizer)


def curate_labeled(src: Rows, cfg: DataConfig, seed: int) -> Curated:
    from codelora.data.labels import LABEL_COLUMNS, split_labeled

    splits, report = split_labeled(src.rows, cfg, seed)
    return Curated(src, src.rows, splits, {k: list(v) for k, v in src.drops.items()}, report, LABEL_COLUMNS)


@dataclass
class PreparedData:
    curated: Curated
    rows: list[dict]  # usable rows
    examples: list[Example]  # rows[i] encoded
    splits: dict[str, list[int]]  # split name -> positions in rows
    too_long: list[int]  # refs dropped for exceeding data.max_length tokens

    def rows_of(self, split: str) -> list[dict]:
        return [self.rows[i] for i in self.splits[split]]

    def examples_of(self, split: str) -> list[Example]:
        return [self.examples[i] for i in self.splits[split]]

    def summary(self) -> dict:
        src = self.curated.source
        drops = {**self.curated.drops, **({"over max_length tokens": self.too_long} if self.too_long else {})}
        return {
            "source": src.source,
            "kind": src.kind,
            "sha256": self.curated.sha256,
            "rows_read": src.total,
            "rows_used": len(self.rows),
            "dropped": {k: len(v) for k, v in drops.items()},
            "split_sizes": {k: len(v) for k, v in self.splits.items()},
            "split_report": self.curated.split_report,
        }


def prepare_data(cfg: DataConfig, seed: int, fmt, loaded: Rows | None = None) -> PreparedData:
    """Curate, encode and split; pass `loaded` when the rows were read already."""
    if isinstance(fmt, ClassFormat):
        curated = curate_labeled(loaded, cfg, seed)
    else:
        curated = curate(loaded or load_data(cfg), cfg, seed)
    encoded, too_long_pos = fmt.encode_all(curated.rows, cfg.max_length)
    too_long = [curated.rows[i]["ref"] for i in too_long_pos]
    if too_long:
        say(f"dropped {len(too_long)} rows longer than data.max_length={cfg.max_length} tokens "
            f"({curated.source.ref_kind}s {too_long[:10]}{' ...' if len(too_long) > 10 else ''})")
    # positions shift once the long rows are gone
    skip = set(too_long_pos)
    keep = [i for i in range(len(curated.rows)) if i not in skip]
    new_pos = {old: new for new, old in enumerate(keep)}
    rows = [curated.rows[i] for i in keep]
    splits = {s: [new_pos[i] for i in v if i in new_pos] for s, v in curated.splits.items()}
    return PreparedData(curated, rows, encoded, splits, too_long)
