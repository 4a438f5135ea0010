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


class AdapterRegistry:
    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ModelError(f"adapter directory not found: {root}; pass --adapters DIR holding one folder per adapter")
        self.root = Path(os.path.realpath(root))

    def resolve(self, name: str) -> AdapterEntry:
        """The adapter called `name`, or AdapterNameError / UnknownAdapterError; reads nothing else."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
            raise AdapterNameError(f"adapter name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-'")
        real = Path(os.path.realpath(self.root / name))
        if real.parent != self.root and self.root not in real.parents:
            raise AdapterNameError(f"adapter {name!r} leads outside the adapter directory; refused")
        if not is_adapter_dir(real):
            raise UnknownAdapterError(f"unknown adapter {name!r}; GET /v1/adapters lists the available ones")
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
