"""What an adapter folder is: which base model it belongs to, and whether its weights are sane.

An adapter folder is a codelora run directory or any folder that plain peft wrote
(`adapter_config.json` + `adapter_model.safetensors`). Its base model is read from the run's
manifest (the resolved model path), else its config.yaml, else peft's
`base_model_name_or_path`; two bases are compared by identity: the embedded model by name,
a local directory by real path, a Hub model by id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from codelora.config import EMBEDDED_HUB_IDS, EMBEDDED_MODEL, ModelConfig
from codelora.config_parse import load_config_file, parse_config
from codelora.errors import ModelError
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG, MANIFEST
from codelora.models.sources import codelora_home


def base_model_of(adapter_dir: Path) -> ModelConfig:
    """The base model an adapter was trained on: the run's model section (name, revision,
    trust_remote_code), else peft's adapter_config.json, else the embedded model."""
    run_config = adapter_dir / CONFIG
    if run_config.is_file():
        return parse_config(load_config_file(run_config)).model
    name = _peft_base_name(adapter_dir)
    if identity_of_name(name or EMBEDDED_MODEL) == "embedded":  # offline first: our copy of SmolLM2
        name = EMBEDDED_MODEL
    return ModelConfig(name=name or EMBEDDED_MODEL)


def _peft_base_name(adapter_dir: Path) -> str | None:
    try:
        return json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError):
        return None


def _embedded_cache() -> str:
    return os.path.realpath(codelora_home() / "models" / EMBEDDED_MODEL)


def identity_of_name(name: str) -> str:
    """'embedded', 'dir:/real/path' or 'hub:owner/name' for a model name as a user or peft wrote it."""
    if name in (EMBEDDED_MODEL, EMBEDDED_HUB_IDS[EMBEDDED_MODEL]):  # our copy of that Hub model: same shapes, tokens
        return "embedded"
    path = Path(name).expanduser()
    if path.is_dir():
        real = os.path.realpath(path)
        return "embedded" if real == _embedded_cache() else f"dir:{real}"
    return f"hub:{name}"


def identity_of_source(source) -> str:
    """Identity of a loaded base model (a `ModelSource`)."""
    if source.kind == "embedded":
        return "embedded"
    if source.kind == "local":
        return identity_of_name(source.path)
    return f"hub:{source.name}"


def adapter_base_identity(adapter_dir: Path) -> str | None:
    """Identity of the base an adapter was trained on, or None when it records none."""
    manifest = adapter_dir / MANIFEST
    if manifest.is_file():
        try:
            model = json.loads(manifest.read_text()).get("model") or {}
        except ValueError:
            model = {}
        kind, path = model.get("kind"), model.get("path")
        if kind == "embedded":
            return "embedded"
        if kind == "local" and path:
            return identity_of_name(path)
        if kind == "hub" and model.get("name"):
            return f"hub:{model['name']}"
    if (adapter_dir / CONFIG).is_file():
        return identity_of_name(base_model_of(adapter_dir).name)
    name = _peft_base_name(adapter_dir)
    return identity_of_name(name) if name else None


def describe_identity(identity: str) -> str:
    return EMBEDDED_MODEL if identity == "embedded" else identity.split(":", 1)[1]


def check_same_base(adapter_dir: Path, source, label: str | None = None) -> None:
    """Refuse an adapter whose recorded base model is not `source`; one that records none passes
    here and is checked by its tensor shapes when loaded."""
    recorded = adapter_base_identity(adapter_dir)
    served = identity_of_source(source)
    if recorded is not None and recorded != served:
        raise ModelError(
            f"adapter {label or adapter_dir} was trained on base model {describe_identity(recorded)}, "
            f"not on {describe_identity(served)}; serve it with --model {describe_identity(recorded)}")


def check_finite(adapter_dir: Path) -> None:
    """Every tensor in adapter_model.safetensors must be finite (no NaN or Inf)."""
    import torch
    from safetensors.torch import load_file

    for name, t in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        if t.is_floating_point():
            bad = (~torch.isfinite(t)).sum().item()
            if bad:
                raise ModelError(f"adapter {adapter_dir}: tensor {name} holds {bad} NaN/Inf values; "
                                 f"the adapter is damaged (retrain it, e.g. with a lower train.lr)")


def check_shapes(adapter_dir: Path, base_model, label: str | None = None) -> None:
    """Every LoRA matrix must fit the base module it adapts (read from the safetensors header,
    before peft touches the model, so a misfit leaves the model as it was)."""
    from safetensors import safe_open

    modules = dict(base_model.named_modules())
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():
            for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
                if part not in key:
                    continue
                path = key.split(part)[0].removeprefix("base_model.model.")
                module = modules.get(path)
                shape = f.get_slice(key).get_shape()
                want = None if module is None else getattr(module, "in_features" if dim else "out_features", None)
                if module is None or (want is not None and shape[dim] != want):
                    where = "has no such module" if module is None else f"needs {want}, the adapter has {shape[dim]}"
                    raise ModelError(f"adapter {label or adapter_dir} does not fit this base model "
                                     f"(trained on another one?): {key}: the base {where}")
