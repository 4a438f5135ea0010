"""Wrap a base model with peft LoRA adapters, and load saved adapters back."""

from __future__ import annotations

from pathlib import Path

from codelora.config import LoraSettings
from codelora.errors import ConfigError, ModelError, first_line
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir


PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classification": "SEQ_CLS"}


def peft_lora_config(s: LoraSettings, base_model: str | None = None, task: str = "causal-lm"):
    from peft import LoraConfig, TaskType

    # SEQ_CLS also trains (and saves) the new classification head, as modules_to_save
    return LoraConfig(
        task_type=TaskType[PEFT_TASK_TYPES[task]],
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=s.target_modules,
        bias=s.bias,
        use_rslora=s.use_rslora,
        use_dora=s.use_dora,
        layers_to_transform=s.layers_to_transform,
        base_model_name_or_path=base_model,  # recorded in adapter_config.json
    )


def apply_lora(model, s: LoraSettings, base_model: str | None = None, task: str = "causal-lm"):
    from peft import get_peft_model

    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if s.layers_to_transform and n_layers is not None and max(s.layers_to_transform) >= n_layers:
        raise ConfigError(f"lora.layers_to_transform={s.layers_to_transform} names a block this model does not have: "
                          f"it has {n_layers} blocks, 0 to {n_layers - 1}")
    try:
        return get_peft_model(model, peft_lora_config(s, base_model, task))
    except ValueError as e:  # peft names the modules it could not find
        first = first_line(e)
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"lora.target_modules={s.target_modules!r} does not fit this model ({first}); "
            f"its linear layers are: {', '.join(names)}"
        ) from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False, adapter_name: str = "default"):
    """Attach a saved adapter (a codelora run directory or any peft adapter folder).

    `model` is a plain base model (it is wrapped in a PeftModel) or a PeftModel already (the
    adapter is added under `adapter_name` next to the ones it has). An adapter whose tensors do
    not fit the model, i.e. one trained on another base, is a one-line ModelError.
    """
    from peft import PeftModel

    d = check_adapter_dir(adapter_dir)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(d), adapter_name=adapter_name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(d), is_trainable=trainable, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as e:
        text = str(e)
        detail = next((ln.strip() for ln in text.splitlines() if "size mismatch" in ln), first_line(e))
        raise ModelError(f"adapter {d} does not fit this base model (was it trained on another one?): "
                         f"{detail[:300]}") from None


def is_adapter_dir(path: Path) -> bool:
    """A peft adapter folder in the form codelora loads: config plus safetensors weights."""
    return RunDir(path).has_adapter()


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{d} holds no adapter (adapter_config.json is missing); pass a run directory of codelora train")
    if not (d / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{d} has no adapter_model.safetensors; codelora loads adapters only as safetensors")
    return d
