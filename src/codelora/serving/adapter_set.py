"""The adapters a server holds in memory: loaded from the registry by name (on first use or at
start), or at run time under a name of the client's choosing from a folder inside the registry
root; unloaded on request.

Reading and checking an adapter (same base, shapes, finite weights) happens on the caller's
thread; only attaching it to the model (peft's module surgery, tens of milliseconds) runs on the
engine thread between two decode steps, so requests already streaming keep going. Unloading
removes the name at once; the weights are deleted once no queued or running sequence uses them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from codelora.errors import CodeloraError, ModelError
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from codelora.models.adapters import check_finite, check_same_base, check_shapes
from codelora.serving.registry import AdapterEntry, AdapterRegistry, UnknownAdapterError


class AdapterLoadError(CodeloraError):
    """The adapter exists but cannot serve on this base (HTTP 409)."""


class AdapterConflictError(CodeloraError):
    """A name already in use, or an adapter the server cannot unload (HTTP 400, as vLLM)."""


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    peft_name: str  # peft's key for it (registry names may hold '.', which torch module keys cannot)
    load_seconds: float
    exclusive: bool  # DoRA: peft cannot mix it with other adapters in one forward pass
    info: dict = field(default_factory=dict)


class AdapterSet:
    def __init__(self, registry: AdapterRegistry | None, on_engine_thread, attach, detach, base, source):
        self.registry = registry
        self.loaded: dict[str, LoadedAdapter] = {}
        self.failed: dict[str, str] = {}  # adapters that cannot serve here, with the reason
        self._on_engine_thread, self._attach, self._detach = on_engine_thread, attach, detach
        self._base, self._source = base, source
        self._count = 0
        self._lock = threading.Lock()  # one load at a time (loads are rare; requests do not take it)

    def get(self, name: str) -> LoadedAdapter:
        """The loaded adapter `name`, loading ROOT/name on first use. Raises the registry's name
        errors, or AdapterLoadError when it was trained on another base or is damaged."""
        if name in self.loaded:
            return self.loaded[name]
        return self.load(name, self._registry().resolve(name), replace=True)

    def load(self, name: str, entry: AdapterEntry, replace: bool = False) -> LoadedAdapter:
        with self._lock:
            if name in self.loaded:
                if replace:
                    return self.loaded[name]
                raise AdapterConflictError(f"adapter {name!r} is already loaded; unload it first to replace it")
            t0 = time.perf_counter()
            try:
                check_same_base(entry.path, self._source, name)
                check_shapes(entry.path, self._base, name)
                check_finite(entry.path)
                self._count += 1
                peft_name = f"adapter{self._count}"
                self._on_engine_thread(lambda: self._attach(entry.path, peft_name))
            except ModelError as e:
                self.failed[name] = str(e)
                raise AdapterLoadError(str(e)) from None
            self.failed.pop(name, None)
            info = _adapter_info(entry.path)
            loaded = LoadedAdapter(name, entry.path, peft_name, time.perf_counter() - t0, bool(info.pop("dora")), info)
            self.loaded[name] = loaded
            return loaded

    def unload(self, name: str) -> LoadedAdapter:
        with self._lock:
            gone = self.loaded.pop(name, None)
            if gone is None:
                raise UnknownAdapterError(f"adapter {name!r} is not loaded; GET /v1/adapters lists the loaded ones")
            self._detach(gone.peft_name)
            return gone

    def names(self) -> list[str]:
        """Every servable name, sorted: the registry's folders and the adapters loaded under other names."""
        return sorted(set(self.registry.names() if self.registry else []) | set(self.loaded))

    def load_all(self) -> list[str]:
        """Load every adapter in the registry now; returns the problems (one line each)."""
        problems = []
        for name in self.registry.names() if self.registry else []:
            try:
                self.get(name)
            except CodeloraError as e:
                problems.append(str(e))
        return problems

    def _registry(self) -> AdapterRegistry:
        if self.registry is None:
            raise UnknownAdapterError("this server was started without --adapters: it serves only the base model")
        return self.registry


def _adapter_info(path: Path) -> dict:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        cfg = {}
    targets = cfg.get("target_modules")
    return {
        "r": cfg.get("r"),
        "alpha": cfg.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "size_bytes": (path / ADAPTER_WEIGHTS).stat().st_size,
        "base_model": cfg.get("base_model_name_or_path"),
        "dora": bool(cfg.get("use_dora")),
    }
