"""`codelora eval RUN_DIR`: re-create a run's test split and compare base vs its adapter."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from codelora.config import RunConfig, load_config_file, parse_config
from codelora.data.dataset import load_data, prepare_data
from codelora.data.prompts import PromptFormat
from codelora.errors import CodeloraError, DataError
from codelora.evaluation.compare import compare_base_and_adapter
from codelora.models.lora import load_adapter
from codelora.models.sources import load_base, pick_device


def evaluate_trained(trained, cfg: RunConfig) -> dict:
    """Evaluate the adapter a `train` call just produced (used by `codelora run`)."""
    d = trained.data
    return compare_base_and_adapter(trained.model, trained.fmt, d.rows_of("test"), d.examples_of("test"), cfg.eval,
                                    trained.tokenizer.pad_token_id, trained.device, trained.run_dir)


def evaluate_run(run_dir: str | Path, limit: int | None = None, max_new_tokens: int | None = None) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CodeloraError(f"{run_dir} is not a codelora run directory (config.yaml is missing)")
    cfg = parse_config(load_config_file(run_dir / "config.yaml"))
    overrides = {k: v for k, v in (("limit", limit), ("max_new_tokens", max_new_tokens)) if v is not None}
    cfg.eval = dataclasses.replace(cfg.eval, **overrides)
    cfg.validate()
    device = pick_device(cfg.train.device)
    loaded = load_data(cfg.data)
    base, tokenizer, _ = load_base(cfg.model, device)
    fmt = PromptFormat(tokenizer)
    data = prepare_data(cfg.data, cfg.seed, fmt, loaded)
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        expected = json.loads(manifest.read_text())["data"]["sha256"]
        if expected != data.curated.sha256:
            raise DataError(f"the data of {cfg.data.source} differs from what run {run_dir} was trained on "
                            f"(sha256 {data.curated.sha256[:12]} != {expected[:12]}); its test split cannot be rebuilt")
    model = load_adapter(base, run_dir)
    return compare_base_and_adapter(model, fmt, data.rows_of("test"), data.examples_of("test"), cfg.eval,
                                    tokenizer.pad_token_id, device, run_dir)
