"""From a data config to encoded, split examples: the data stage shared by train and eval."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from codelora.config import DataConfig
from codelora.data.load import LoadedData, load_rows
from codelora.data.prompts import Example, PromptFormat
from codelora.data.split import split_indices


@dataclass
class PreparedData:
    loaded: LoadedData
    rows: list[dict]  # usable rows, in source order
    examples: list[Example]  # rows[i] encoded
    splits: dict[str, list[int]]  # split name -> positions in rows
    too_long: list[int]  # positions in loaded.rows dropped for exceeding max_length

    def rows_of(self, split: str) -> list[dict]:
        return [self.rows[i] for i in self.splits[split]]

    def examples_of(self, split: str) -> list[Example]:
        return [self.examples[i] for i in self.splits[split]]

    def summary(self) -> dict:
        return {
            "source": self.loaded.source,
            "kind": self.loaded.kind,
            "sha256": self.loaded.sha256,
            "rows_in_source": self.loaded.total_rows,
            "rows_read": len(self.loaded.rows) + sum(len(v) for v in self.loaded.dropped.values()),
            "rows_used": len(self.rows),
            "dropped": {**{k: len(v) for k, v in self.loaded.dropped.items()},
                        **({"over max_length": len(self.too_long)} if self.too_long else {})},
            "split_sizes": {k: len(v) for k, v in self.splits.items()},
        }


def load_data(cfg: DataConfig) -> LoadedData:
    return load_rows(cfg.source, fallback=cfg.fallback, limit=cfg.limit)


def prepare_data(cfg: DataConfig, seed: int, fmt: PromptFormat, loaded: LoadedData | None = None) -> PreparedData:
    """Encode and split; pass `loaded` when the rows were read already (to fail fast on bad data)."""
    loaded = loaded or load_data(cfg)
    encoded, too_long = fmt.encode_all(loaded.rows, cfg.max_length)
    if too_long:
        print(f"codelora: dropped {len(too_long)} rows longer than data.max_length={cfg.max_length} tokens "
              f"(row positions {too_long[:10]}{' ...' if len(too_long) > 10 else ''})", file=sys.stderr)
    skip = set(too_long)
    rows = [r for i, r in enumerate(loaded.rows) if i not in skip]
    splits = split_indices(len(rows), cfg.val_fraction, cfg.test_fraction, seed)
    return PreparedData(loaded=loaded, rows=rows, examples=encoded, splits=splits, too_long=too_long)
