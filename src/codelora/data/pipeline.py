"""The data path of each model.task, top to bottom, shared by `data prepare`, `train`, `run` and `eval`.
Each stage is one call into the module that owns it:

    causal-lm, seq2seq (instruction rows):  read -> validate -> clean -> (decontaminate) -> group related
                                            rows -> split -> audit the split
    classification (text/label rows):       read -> validate and label -> check the share dropped -> split
                                            (same text, same split)

then, once the model's tokenizer is loaded: encode in the task's format (prompts.format_for) and drop
the rows over data.max_length tokens. The rows are curated before the model loads, so bad data fails
in seconds. Each step reports what it dropped, by reason, with line/row numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from codelora.config import DataConfig
from codelora.console import say
from codelora.data.clean import clean_rows
from codelora.data.decontaminate import contaminated
from codelora.data.dedup import cross_split_audit, group_related
from codelora.data.labels import LABEL_COLUMNS, Labeled, labeled_rows, split_labeled
from codelora.data.load import REQUIRED_COLUMNS, read_source
from codelora.data.prompts import Example
from codelora.data.split import SPLITS, split_groups
from codelora.data.validate import Rows, describe_drops, instruction_rows, usable
from codelora.errors import DataError


def content_sha256(rows: list[dict], columns: tuple[str, ...] = REQUIRED_COLUMNS) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r[c] for c in columns], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


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


# --- causal-lm and seq2seq: instruction/input/output rows -------------------------------------------


def instruction_data(cfg: DataConfig, seed: int) -> Curated:
    """The rows of a causal-lm or seq2seq run, curated and split (the two differ only in their format)."""
    return curate(load_data(cfg), cfg, seed)


def load_data(cfg: DataConfig, enforce_drop_limit: bool = True) -> Rows:
    """Read and validate; fails fast (before any model load) on unusable data."""
    raw = read_source(cfg.source, cfg.fallback, cfg.limit)
    return instruction_rows(raw, cfg.max_chars, cfg.max_drop_fraction if enforce_drop_limit else None)


def curate(src: Rows, cfg: DataConfig, seed: int) -> Curated:
    """Clean -> (decontaminate) -> group related rows -> split -> audit the split."""
    drops = {k: list(v) for k, v in src.drops.items()}
    if src.splits is not None:  # a prepared directory: cleaned and split already
        return Curated(src, src.rows, src.splits, drops, {"prepared": src.source})
    rows, clean_drops = clean_rows(src.rows, cfg.clean)
    drops.update(clean_drops)
    if cfg.decontaminate:
        bad = set(contaminated(rows))
        if bad:
            drops["HumanEval overlap"] = [rows[i]["ref"] for i in sorted(bad)]
        rows = [r for i, r in enumerate(rows) if i not in bad]
    if not rows:
        raise DataError(f"{src.source}: no rows left after cleaning ({describe_drops(drops, src.ref_kind)})")
    groups, relations = group_related(rows, cfg.near_duplicate_threshold)
    splits = split_groups(groups, cfg.val_fraction, cfg.test_fraction, seed)
    across, flagged = cross_split_audit(rows, splits, cfg.near_duplicate_threshold)
    if flagged:  # the grouping relates whole texts, so a near-duplicate answer can straddle the split
        say(f"split audit: {len(flagged)} held-out row(s) near-duplicate a training row, kept where the split put "
            f"them ({src.ref_kind}s " + ", ".join(f"{p['train']}~{p.get('validation', p.get('test'))}: {p['relation']} "
                                                  f"{p['jaccard']}" for p in flagged[:5])
            + (", ..." if len(flagged) > 5 else "") + ")")
    pair_kinds = {"exact instruction": relations.exact_instruction, "exact output": relations.exact_output,
                  "near duplicate": relations.near_duplicate}
    report = {
        "rows": len(rows),
        "groups": len(groups),
        "grouped_rows": sum(len(g) for g in groups if len(g) > 1),
        "largest_group": max(len(g) for g in groups),
        "related_pairs": {k: len(v) for k, v in pair_kinds.items()},
        "cross_split_pairs": across,
        "cross_split_near_duplicates": flagged,
        "near_duplicate_threshold": cfg.near_duplicate_threshold,
        "split_sizes": {s: len(splits[s]) for s in SPLITS},
    }
    return Curated(src, rows, splits, drops, report)


# --- classification: text/label rows ---------------------------------------------------------------


def classification_data(cfg: DataConfig, seed: int) -> Curated:
    """The rows of a classification run: read, validated and labeled, then split so that rows with the
    same text share a split."""
    labeled = load_labeled(cfg)
    src = labeled.rows
    if labeled.builtin:
        say(f"{src.source}: classification task built in: the keyword category of each instruction "
            f"(data.categories; 'other' when none matches)")
    splits, report = split_labeled(src.rows, cfg, seed)
    return Curated(src, src.rows, splits, {k: list(v) for k, v in src.drops.items()}, report, LABEL_COLUMNS)


def load_labeled(cfg: DataConfig) -> Labeled:
    """Read, validate and label; fails fast (before any model load) on unusable data."""
    # no column check while reading: which columns are required depends on the shape found
    labeled = labeled_rows(read_source(cfg.source, cfg.fallback, cfg.limit, required=()), cfg)
    usable(labeled.rows, cfg.max_drop_fraction)
    return labeled


# --- every task ------------------------------------------------------------------------------------

PIPELINES = {"causal-lm": instruction_data, "seq2seq": instruction_data, "classification": classification_data}


def task_data(cfg: DataConfig, task: str, seed: int) -> Curated:
    """The curated, split rows of a model.task (before the model loads: bad data fails in seconds)."""
    return PIPELINES.get(task, instruction_data)(cfg, seed)


def encode(curated: Curated, fmt, max_length: int) -> PreparedData:
    """The last stage: rows -> model inputs in `fmt` (prompts.format_for), without the rows over max_length."""
    encoded, too_long_pos = fmt.encode_all(curated.rows, max_length)
    too_long = [curated.rows[i]["ref"] for i in too_long_pos]
    if too_long:
        say(f"dropped {len(too_long)} rows longer than data.max_length={max_length} tokens "
            f"({curated.source.ref_kind}s {too_long[:10]}{' ...' if len(too_long) > 10 else ''})")
    # positions shift once the long rows are gone
    skip = set(too_long_pos)
    keep = [i for i in range(len(curated.rows)) if i not in skip]
    new_pos = {old: new for new, old in enumerate(keep)}
    rows = [curated.rows[i] for i in keep]
    splits = {s: [new_pos[i] for i in v if i in new_pos] for s, v in curated.splits.items()}
    return PreparedData(curated, rows, encoded, splits, too_long)


def prepare_data(cfg: DataConfig, seed: int, fmt, task: str = "causal-lm") -> PreparedData:
    """task_data then encode: the whole path in one call, for a tokenizer at hand already."""
    return encode(task_data(cfg, task, seed), fmt, cfg.max_length)
