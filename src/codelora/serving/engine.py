"""One base model in memory, adapters attached to it once and switched per request.

The first adapter wraps the base in a peft PeftModel; later ones are added next to it. A
request for the base runs under `disable_adapter()`, a request for an adapter after
`set_adapter()`: switching is a flag flip, not a weight copy. Generation holds a lock because
the active adapter is global state of the model; the HTTP layer feeds it from one worker thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from codelora.config import GenerateConfig, ModelConfig, ServeConfig
from codelora.data.prompts import PromptFormat
from codelora.errors import CodeloraError, ModelError
from codelora.models.generate import decoding_kwargs
from codelora.models.adapters import check_finite, check_same_base, check_shapes
from codelora.serving.registry import AdapterRegistry


class ContextLengthError(CodeloraError):
    """The prompt plus the tokens asked for do not fit the model's context (HTTP 400)."""


class AdapterLoadError(CodeloraError):
    """The adapter exists but cannot serve on this base (HTTP 409)."""


@dataclass
class Generation:
    text: str
    model: str  # "base" or the adapter's name
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": the model ended its turn; "length": max_new_tokens reached
    seconds: float
    token_ids: list[int] = field(default_factory=list)  # the generated tokens, as the model produced them


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    peft_name: str  # peft's key for it (registry names may hold '.', which torch module keys cannot)
    load_seconds: float
    info: dict = field(default_factory=dict)


class Engine:
    def __init__(self, model_cfg: ModelConfig, registry: AdapterRegistry | None, device: str = ServeConfig.device):
        from codelora.models.sources import load_base, pick_device

        self.device = pick_device(device)
        self.base, self.tokenizer, self.source = load_base(model_cfg, self.device)
        self.fmt = PromptFormat(self.tokenizer)
        self.registry = registry
        self.model = self.base  # a PeftModel once the first adapter is loaded
        self.adapters: dict[str, LoadedAdapter] = {}
        self.failed: dict[str, str] = {}  # adapters that cannot serve here, with the reason
        self.context_length = getattr(self.base.config, "max_position_embeddings", None)
        self._lock = threading.RLock()

    @property
    def base_name(self) -> str:
        return self.source.name

    # -- adapters ---------------------------------------------------------------------------
    def adapter(self, name: str) -> LoadedAdapter:
        """The loaded adapter `name`, loading it on first use. Raises the registry's name errors,
        or AdapterLoadError when it was trained on another base or is damaged."""
        if self.registry is None:
            from codelora.serving.registry import UnknownAdapterError

            raise UnknownAdapterError(f"unknown adapter {name!r}: this server was started without --adapters")
        entry = self.registry.resolve(name)
        with self._lock:
            if name in self.adapters:
                return self.adapters[name]
            t0 = time.perf_counter()
            try:
                check_same_base(entry.path, self.source, name)
                check_shapes(entry.path, self.base, name)
                check_finite(entry.path)
                from codelora.models.lora import load_adapter

                peft_name = f"adapter{len(self.adapters)}"
                self.model = load_adapter(self.model, entry.path, adapter_name=peft_name)
            except ModelError as e:
                self.failed[name] = str(e)
                raise AdapterLoadError(str(e)) from None
            self.failed.pop(name, None)
            loaded = LoadedAdapter(name, entry.path, peft_name, time.perf_counter() - t0, _adapter_info(entry.path))
            self.adapters[name] = loaded
            return loaded

    def preload(self) -> list[str]:
        """Load every adapter in the registry now; returns the problems (one line each)."""
        problems = []
        for name in self.registry.names() if self.registry else []:
            try:
                self.adapter(name)
            except CodeloraError as e:
                problems.append(str(e))
        return problems

    @contextlib.contextmanager
    def activated(self, adapter: str | None):
        """Run the model as the base (adapter None) or as `adapter`."""
        with self._lock:
            if adapter is None:
                ctx = self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
                with ctx:
                    yield self.model
            else:
                peft_name = self.adapter(adapter).peft_name  # first: loading may wrap self.model
                if self.model.active_adapter != peft_name:  # set_adapter walks every module: skip when set
                    self.model.set_adapter(peft_name)
                yield self.model

    # -- prompts and generation -------------------------------------------------------------
    def question_ids(self, question: str) -> list[int]:
        return self.fmt.prompt_ids(question)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.fmt.chat_prompt_ids(messages)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context_length and prompt_tokens + max_new_tokens > self.context_length:
            room = self.context_length - prompt_tokens
            hint = (f"lower max_new_tokens to {room} or less" if room > 0 else "shorten the prompt")
            raise ContextLengthError(
                f"prompt is {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds the model's "
                f"context of {self.context_length} tokens: {hint}")

    def generate(self, ids: list[int], adapter: str | None = None, gen: GenerateConfig | None = None,
                 seed: int | None = None, min_new_tokens: int | None = None) -> Generation:
        """Answer one prompt: greedy at temperature 0, else sampled (seeded when `seed` is given)."""
        import torch

        gen = gen or GenerateConfig()
        self.check_fits(len(ids), gen.max_new_tokens)
        with self.activated(adapter) as model, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            t0 = time.perf_counter()
            input_ids = torch.tensor([ids], device=self.device)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 min_new_tokens=min_new_tokens, **decoding_kwargs(self.fmt, gen))
            seconds = time.perf_counter() - t0
        new = out[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] in self.fmt.stop_ids
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return Generation(text, adapter or "base", len(ids), len(new), "stop" if stopped else "length", seconds,
                          new)


def _adapter_info(path: Path) -> dict:
    import json

    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    targets = cfg.get("target_modules")
    return {
        "r": cfg.get("r"),
        "alpha": cfg.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "size_bytes": (path / "adapter_model.safetensors").stat().st_size,
        "base_model": cfg.get("base_model_name_or_path"),
    }
