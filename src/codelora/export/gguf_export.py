"""`codelora export RUN_DIR --format gguf|gguf-lora --out DIR`, read top to bottom:

1. the PyTorch model to export: an adapter merged into its base (behind the merge gate), or the
   whole model of a full / top-K run; for gguf-lora the base and the adapter separately;
2. save it as a transformers directory inside the staged output and convert it with llama.cpp's
   converter to f16 GGUF; quantize that with llama.cpp's quantizer;
3. load every file in llama.cpp and compare it with the PyTorch model (export/parity.py): the
   f16 file (or the LoRA on the f16 base) must pass, no file may produce NaN;
4. write the Ollama Modelfile and export_report.json, then publish the directory (a failure at
   any step leaves no output directory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from codelora.config import ExportConfig, MergeConfig, ModelConfig, validated
from codelora.console import Stages, say
from codelora.data.prompts import PromptFormat
from codelora.decoding.gguf_model import GgufModel, import_llama_cpp
from codelora.errors import first_line
from codelora.export.converters import (ExportError, check_architecture, convert_lora, convert_model,
                                         converter_dir)
from codelora.export.merge import MERGE_STAGES, merged_model, save_model
from codelora.export.modelfile import modelfile
from codelora.export.parity import Reference, check_file, verdict
from codelora.export.quantize import quantize
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_REPORT, RunDir, staged_run_dir
from codelora.models.adapters import base_model_of, check_finite, check_same_base, check_shapes
from codelora.models.lora import load_adapter
from codelora.models.sources import load_base, pick_device, resolve_model


def export(run_dir: str | Path, out: str | Path, ec: ExportConfig, overwrite: bool = False) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    ec = validated(ec, "--")
    kind = _run_kind(run_dir, ec)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == run_dir.resolve():
        raise ExportError("--out must differ from the run directory")
    import_llama_cpp(), converter_dir()  # say what to install before any work
    t0 = time.perf_counter()
    with Stages(_stage_count(kind, ec), "export") as stage:
        stage("checking the architecture")
        check_architecture(*_architecture(run_dir, kind))
        dev = pick_device(ec.device)
        with staged_run_dir(out, overwrite=overwrite) as staged:
            if ec.format == "gguf":
                report = _export_model(run_dir, kind, staged, ec, dev, stage)
            else:
                report = _export_lora(run_dir, staged, ec, dev, stage)
            report["seconds"] = round(time.perf_counter() - t0, 1)
            write_json_atomic(staged / EXPORT_REPORT, report)
    for name, f in report["files"].items():
        p = f.get("parity")
        figures = "" if p is None else (f": top-1 agreement {p['top1_agreement']:.3f}, mean KL {p['mean_kl']:.2e}, "
                                        f"max |logit diff| {p['max_abs_diff']:.3g}, greedy equal "
                                        f"{p['greedy_equal']}/{len(p['greedy'])}")
        say(f"{out / name} ({f['bytes'] / 1e6:.0f} MB){figures}")
    files = (f"--gguf {out / report['main_file']}" if ec.format == "gguf" else
             f"--gguf {out / 'base-f16.gguf'} --gguf-lora {out / report['main_file']}")
    say(f"wrote {out}/Modelfile and export_report.json; try: codelora ask \"Reverse a string in Python\" {files}")
    return report


def _quants(ec: ExportConfig) -> list[str]:
    return list(dict.fromkeys(ec.quant.split(",")))


def _stage_count(kind: str, ec: ExportConfig) -> int:
    """The stage() calls of an export (its bar's total): the architecture check, then those of
    _export_lora, or of _export_model: load (merge), save, convert, quantize and check each file."""
    if ec.format == "gguf-lora":
        return 1 + 6
    quantized = len([q for q in _quants(ec) if q != "f16"])
    return 1 + (MERGE_STAGES if kind == "adapter" else 1) + 2 + quantized + 1 + (1 + quantized)


def _run_kind(run_dir: Path, ec: ExportConfig) -> str:
    """'adapter' or 'model' (a full / top-K run); refuses what llama.cpp cannot run as a chat model."""
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    if RunDir(run_dir).adapter_config.is_file():
        kind = "adapter"
    elif (run_dir / "config.json").is_file():
        kind = "model"
    else:
        raise ExportError(f"{run_dir} holds neither an adapter (adapter_config.json) nor a model (config.json)")
    task = base_model_of(run_dir).task if kind == "adapter" or RunDir(run_dir).has_config() else "causal-lm"
    if task != "causal-lm":
        raise ExportError(f"{run_dir} was trained with model.task={task}; GGUF export is for causal language models")
    if ec.format == "gguf-lora" and kind != "adapter":
        raise ExportError(f"{run_dir} holds a whole model (a full / top-K run): export it with --format gguf")
    return kind


def _architecture(run_dir: Path, kind: str) -> tuple[str | None, str]:
    """(transformers architecture, the model's name) of what will be converted."""
    from transformers import AutoConfig

    if kind == "model":
        path, name = run_dir, str(run_dir)
    else:
        model_cfg = base_model_of(run_dir)
        path, name = resolve_model(model_cfg).path, model_cfg.name
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except OSError as e:  # a Hub model that is neither cached nor reachable
        raise ExportError(f"cannot read the config of the base model {name}: {first_line(e)}") from None
    return (config.architectures or [None])[0], name


# -- format gguf: the whole model --------------------------------------------------------------------


def _export_model(run_dir: Path, kind: str, staged: Path, ec: ExportConfig, dev: str, stage) -> dict:
    quants = _quants(ec)
    if kind == "adapter":
        check_finite(run_dir)
        m = merged_model(run_dir, MergeConfig(device=ec.device), dev, stage)
        model, tokenizer, fmt, source, merge_report = m.model, m.tokenizer, m.fmt, m.source, m.report["parity"]
    else:
        stage("loading the model")
        model, tokenizer, source = load_base(ModelConfig(name=str(run_dir)), dev)
        fmt, merge_report = PromptFormat(tokenizer), None
    hf_dir = staged / ".merged"
    stage("saving for the converter")
    save_model(model, tokenizer, hf_dir, name_or_path=source.name)
    stage("converting to GGUF f16")
    f16 = convert_model(hf_dir, staged / "model-f16.gguf", "f16")
    shutil.rmtree(hf_dir)
    paths = {"f16": f16}
    for q in quants:
        if q != "f16":
            stage(f"quantizing to {q}")
            say(f"quantizing to {q} with llama.cpp ...")
            paths[q] = quantize(f16, staged / f"model-{q}.gguf", q, _threads(ec))
    stage("PyTorch reference")
    ref = Reference(model, fmt, dev, ec.greedy_tokens)
    files = {}
    for q, path in paths.items():  # f16 first: a failed gate stops before the others are checked
        stage(f"llama.cpp check of {path.name}")
        files[path.name] = _checked(path, q, ref, ec, strict=q == "f16")
    if "f16" not in quants:  # only the intermediate of the others; its figures stay in the report
        f16.unlink()
        files["model-f16.gguf"]["kept"] = False
    kept = [n for n, f in files.items() if f.get("kept", True)]
    main = kept[-1]  # the smallest requested
    write_text_atomic(staged / "Modelfile", modelfile(fmt, main, others=[n for n in kept if n != main]))
    return _report(run_dir, "gguf", source, files, main, ec, merge_report)


# -- format gguf-lora: the adapter alone, and the base it applies to ------------------------------------


def _export_lora(run_dir: Path, staged: Path, ec: ExportConfig, dev: str, stage) -> dict:
    adapter_config = _lora_config(run_dir)
    check_finite(run_dir)
    model_cfg = base_model_of(run_dir)
    model_cfg.quantize = "none"
    stage("loading the base model")  # six stages: _stage_count
    base, tokenizer, source = load_base(model_cfg, dev)
    check_same_base(run_dir, source)
    check_shapes(run_dir, base)
    hf_dir = staged / ".base"
    stage("saving the base for the converter")
    save_model(base, tokenizer, hf_dir, name_or_path=source.name)  # before the adapter is attached to it
    stage("converting the base to GGUF f16")
    base_gguf = convert_model(hf_dir, staged / "base-f16.gguf", "f16")
    stage("converting the adapter to GGUF")
    adapter_dir = _llama_cpp_adapter(run_dir, adapter_config, staged / ".adapter")
    lora = convert_lora(adapter_dir, hf_dir, staged / "adapter-f32.gguf", "f32")
    shutil.rmtree(hf_dir), shutil.rmtree(adapter_dir)
    fmt = PromptFormat(tokenizer)
    stage("PyTorch reference")
    ref = Reference(load_adapter(base, run_dir).eval(), fmt, dev, ec.greedy_tokens)
    stage(f"llama.cpp check of {lora.name}")
    files = {lora.name: _checked(base_gguf, "f16 + LoRA", ref, ec, strict=True, lora=lora),
             base_gguf.name: {"quant": "f16", "bytes": base_gguf.stat().st_size, "role": "the base model"}}
    write_text_atomic(staged / "Modelfile", modelfile(fmt, base_gguf.name, adapter_name=lora.name))
    return _report(run_dir, "gguf-lora", source, files, base_gguf.name, ec, None, lora=lora.name)


def _lora_config(run_dir: Path) -> dict:
    """The adapter's config, refusing what llama.cpp's LoRA format cannot express."""
    cfg = json.loads(RunDir(run_dir).adapter_config.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{run_dir} is a {cfg['peft_type']} adapter; GGUF LoRA holds LoRA only: use --format gguf")
    for key, why in (("use_dora", "DoRA's magnitude vectors"), ("rank_pattern", "per-module ranks"),
                     ("alpha_pattern", "per-module alphas"), ("modules_to_save", "fully trained modules")):
        if cfg.get(key):
            raise ExportError(f"{run_dir}: a GGUF LoRA cannot hold {why} ({key} is set); export the merged model "
                              f"with --format gguf")
    return cfg


def _llama_cpp_adapter(run_dir: Path, cfg: dict, to: Path) -> Path:
    """A copy of the adapter folder llama.cpp reads right: it scales by alpha / r, so an rsLoRA
    adapter (scale alpha / sqrt(r)) gets alpha * sqrt(r) (Ollama has no scale to set)."""
    to.mkdir()
    shutil.copy2(run_dir / ADAPTER_WEIGHTS, to / ADAPTER_WEIGHTS)
    if cfg.get("use_rslora"):
        cfg = {**cfg, "lora_alpha": cfg["lora_alpha"] * math.sqrt(cfg["r"]), "use_rslora": False}
    (to / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2))
    return to


# -- checks and report --------------------------------------------------------------------------------


def _threads(ec: ExportConfig) -> int:
    return ec.threads or os.cpu_count() or 1


def _checked(path: Path, quant: str, ref: Reference, ec: ExportConfig, strict: bool, lora: Path | None = None) -> dict:
    """Load `path` (with `lora`) in llama.cpp, compare with the reference; refuse per parity.verdict."""
    say(f"checking {path.name}{' + ' + lora.name if lora else ''} in llama.cpp against PyTorch ...")
    t0 = time.perf_counter()
    gguf = GgufModel(path, n_ctx=ref.needed_context, threads=_threads(ec), lora=lora, all_logits=True,
                     tokenizer=ref.fmt.tok)
    try:
        stats = check_file(ref, gguf)
    finally:
        gguf.close()
    why = verdict(stats, ec, strict)
    if why:
        raise ExportError(f"export refused, nothing written: {path.name}{' + ' + lora.name if lora else ''} in "
                          f"llama.cpp does not match the PyTorch model: {why}")
    return {"quant": quant, "bytes": (lora or path).stat().st_size, "parity": stats,
            "check_seconds": round(time.perf_counter() - t0, 1)}


def _report(run_dir: Path, fmt: str, source, files: dict, main: str, ec: ExportConfig, merge_parity: dict | None,
            lora: str | None = None) -> dict:
    return {
        "run": str(run_dir), "format": fmt, "base_model": source.to_dict(), "main_file": lora or main,
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "thresholds": {"max_abs_diff": ec.max_abs_diff, "max_kl": ec.max_kl, "greedy_tokens": ec.greedy_tokens,
                       "tie_margin": ec.tie_margin},
        "merge_parity": merge_parity, "files": files,
    }
