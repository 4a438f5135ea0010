"""`codelora merge`: fold an adapter into its base model, behind a parity gate.

Merging computes W + (alpha / r) * B @ A once, so the merged model runs at the base model's speed
with no adapter code at all. The gate runs fixed prompts through the adapter model (unmerged)
and the merged model and refuses to write anything when their logits differ by more than
`max_abs_diff` or their next-token distributions by more than `max_kl`, or when either holds NaN
or Inf. The merged model is written (staged, then renamed) as safetensors with the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codelora.config import MergeConfig, validated
from codelora.console import Stages, no_stages, say
from codelora.data.prompts import PromptFormat
from codelora.errors import CodeloraError, ModelError
from codelora.export.parity import compare_logits, parity_verdict, probe_ids, probe_logits
from codelora.io.files import write_json_atomic
from codelora.io.rundir import MERGE_REPORT, staged_run_dir
from codelora.models.adapters import base_model_of, check_same_base, check_shapes
from codelora.models.lora import check_adapter_dir, count_parameters, load_adapter
from codelora.models.sources import load_base, pick_device

MERGE_STAGES = 4  # the stage() calls of merged_model: base, adapter, merge, parity check


class ParityError(CodeloraError):
    pass


@dataclass
class Merged:
    """A merged model that passed the gate, with what was needed to build and check it."""

    model: object
    tokenizer: object
    fmt: object
    source: object  # the base's ModelSource
    report: dict


def merged_model(run_dir: Path, mc: MergeConfig, dev: str, stage=no_stages) -> Merged:
    """Load the adapter of `run_dir` on its base, merge it, and gate the merge (ParityError if unfaithful).
    `stage(name)` is told as each of its MERGE_STAGES stages starts (a caller's console.Stages bar)."""
    model_cfg = base_model_of(run_dir)
    model_cfg.quantize = "none"  # merge into full-precision weights
    stage("loading the base model")
    base, tokenizer, source = load_base(model_cfg, dev)
    check_same_base(run_dir, source)
    check_shapes(run_dir, base)
    _, base_params = count_parameters(base)
    fmt = PromptFormat(tokenizer)
    ids = probe_ids(fmt)
    base_logits = probe_logits(base, ids, dev)

    stage("loading the adapter")
    adapted = load_adapter(base, run_dir).eval()
    adapter_logits = probe_logits(adapted, ids, dev)
    stage("merging")
    merged = adapted.merge_and_unload(safe_merge=False)  # NaN weights are the gate's job, with a clearer message
    stage("parity check")
    merged_logits = probe_logits(merged, ids, dev)
    stats = compare_logits(adapter_logits, merged_logits)
    effect = compare_logits(base_logits, adapter_logits)
    _, merged_params = count_parameters(merged)
    report = {
        "adapter": str(run_dir), "base_model": source.to_dict(),
        "thresholds": {"max_abs_diff": mc.max_abs_diff, "max_kl": mc.max_kl},
        "parity": stats, "adapter_vs_base": {"max_abs_diff": effect["max_abs_diff"], "mean_kl": effect["mean_kl"]},
        "parameters": {"base": base_params, "merged": merged_params},
    }
    verdict = parity_verdict(stats, mc, "the adapter or merged model produces NaN/Inf logits")
    if verdict is None and merged_params != base_params:
        verdict = f"the merged model has {merged_params:,} parameters, the base {base_params:,}"
    if verdict:
        raise ParityError(f"merge refused, nothing written: {verdict} (adapter {run_dir})")
    say(f"merge parity gate passed on {stats['positions']} positions: max |logit diff| {stats['max_abs_diff']:.2e}, "
        f"max KL {stats['max_kl']:.2e}; the adapter moves logits by up to {effect['max_abs_diff']:.3g} vs the base")
    return Merged(merged, tokenizer, fmt, source, report)


def merge(run_dir: str | Path, out: str | Path, mc: MergeConfig | None = None, overwrite: bool = False) -> dict:
    """Merge the adapter in `run_dir` into its base and write the full model to `out`."""
    run_dir, out = check_adapter_dir(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise CodeloraError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == run_dir.resolve():
        raise CodeloraError("--out must differ from the adapter directory")
    mc = validated(mc or MergeConfig(), "--")
    with Stages(MERGE_STAGES + 1, "merge") as stage:
        m = merged_model(run_dir, mc, pick_device(mc.device), stage)
        stage("saving")
        with staged_run_dir(out, overwrite=overwrite) as staged:
            save_model(m.model, m.tokenizer, staged, name_or_path=str(out))
            write_json_atomic(staged / MERGE_REPORT, m.report)
    say(f"merged model ({m.report['parameters']['merged']:,} parameters, same as the base) written to {out}; "
        f"use it with --model {out}")
    return m.report


def save_model(model, tokenizer, directory: Path, name_or_path: str) -> None:
    """save_pretrained of a model and its tokenizer, as safetensors, quietly."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.config.name_or_path = name_or_path
    model.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)
    written = sorted(p.name for p in directory.iterdir())
    if not any(n.endswith(".safetensors") for n in written):
        raise ModelError(f"save_pretrained wrote no safetensors file into {directory}: {written}")
