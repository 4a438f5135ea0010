"""A directory of named adapters: `ROOT/NAME/` holds a codelora run or a peft adapter folder.

Names come from HTTP requests, so they are checked twice before anything is read: against
NAME_PATTERN (no slashes, so no `../x` and no absolute paths), and by real path, which must lie
inside the root (a symlink that leads out is refused).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from codelora.errors import CodeloraError, ModelError
from codelora.models.lora import is_adapter_dir

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")  # whole name (fullmatch: "$" would allow a final newline)


class AdapterNameError(CodeloraError):
    """The name is not an acceptable adapter name (HTTP 400)."""


class UnknownAdapterError(CodeloraError):
    """No adapter of that name in the registry (HTTP 404)."""


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    path: Path  # real path, inside the registry root


def check_name(name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise AdapterNameError(f"adapter name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-'")


class AdapterRegistry:
    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ModelError(f"adapter directory not found: {root}; pass --adapters DIR holding one folder per adapter")
        self.root = Path(os.path.realpath(root))

    def resolve(self, name: str) -> AdapterEntry:
        """The adapter called `name`, or AdapterNameError / UnknownAdapterError; reads nothing else."""
        check_name(name)
        real = Path(os.path.realpath(self.root / name))
        if real.parent != self.root and self.root not in real.parents:
            raise AdapterNameError(f"adapter {name!r} leads outside the adapter directory; refused")
        if not is_adapter_dir(real):
            raise UnknownAdapterError(f"unknown adapter {name!r}; GET /v1/adapters lists the available ones")
        return AdapterEntry(name, real)

    def resolve_path(self, name: str, path: str) -> AdapterEntry:
        """The adapter folder `path` (absolute, or relative to the root) served as `name`: the
        folder must lie inside the root once symlinks are followed, like names."""
        check_name(name)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise AdapterNameError("lora_path must be a folder inside the adapter directory")
        real = Path(os.path.realpath(self.root / Path(path).expanduser()))
        if real != self.root and self.root not in real.parents:
            raise AdapterNameError(f"lora_path {path!r} lies outside the adapter directory {self.root}; refused")
        if not is_adapter_dir(real):
            raise UnknownAdapterError(f"lora_path {path!r} is not an adapter folder (no adapter_config.json and "
                                      f"adapter_model.safetensors)")
        return AdapterEntry(name, real)

    def names(self) -> list[str]:
        """Every acceptable adapter in the root, sorted; folders that fail the checks are left out."""
        found = []
        for child in sorted(self.root.iterdir()):
            try:
                found.append(self.resolve(child.name).name)
            except CodeloraError:
                continue
        return found
