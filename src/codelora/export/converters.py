"""llama.cpp's converter scripts (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`), run as
child processes by path.

They are not part of the llama-cpp-python wheel, only of its source distribution, and they
import the `gguf` package vendored beside them (newer than PyPI's). `make install-gguf`
extracts them into the environment's `share/codelora/llama.cpp`; CODELORA_LLAMA_CPP points
elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from codelora.errors import CodeloraError
from codelora.io.files import write_text_atomic
from codelora.models.sources import codelora_home

CONVERTERS_ENV = "CODELORA_LLAMA_CPP"
INSTALL_HINT = "make install-gguf"


class ExportError(CodeloraError):
    pass


def converter_dir() -> Path:
    d = Path(os.environ.get(CONVERTERS_ENV) or Path(sys.prefix) / "share" / "codelora" / "llama.cpp")
    if not (d / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"llama.cpp's converter scripts are not in {d}; install them with: {INSTALL_HINT} "
                          f"(or set {CONVERTERS_ENV} to a llama.cpp checkout)")
    return d


def _run(script: str, args: list[str], what: str) -> str:
    d = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(d / "gguf-py"), str(d)])}
    env.pop("NO_LOCAL_GGUF", None)  # the scripts must use the gguf package vendored beside them
    r = subprocess.run([sys.executable, str(d / script), *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise ExportError(f"llama.cpp's {script} could not convert {what}: {_reason(r.stderr)}")
    return r.stdout + r.stderr


def listing_cache() -> Path:
    """Where the supported architectures of the converter scripts in `converter_dir()` are kept."""
    d = converter_dir()
    stamp = hashlib.sha256("".join(f"{p.relative_to(d)} {p.stat().st_size} {p.stat().st_mtime_ns}\n"
                                   for p in sorted(d.rglob("*.py"))).encode()).hexdigest()[:16]
    return codelora_home() / "llama.cpp" / f"supported-{stamp}.txt"


def supported_architectures(ask: bool = False) -> set[str]:
    """The text-model architectures llama.cpp's converter knows. Its `--print-supported-models` takes ~3 s
    (the script imports torch), so the list is kept under CODELORA_HOME, one file per version of the
    converter scripts (their names, sizes and times); `ask`: ask the converter again all the same."""
    cache = listing_cache()
    if cache.is_file() and not ask:
        try:
            return set(cache.read_text().split())
        except (OSError, UnicodeDecodeError):  # unreadable: ask again
            pass
    listing = _run("convert_hf_to_gguf.py", ["--print-supported-models"], "anything (listing its models)")
    text_models = listing.split("TEXT models:")[-1].split("models:")[0]
    supported = set(re.findall(r"^\s*-\s*(\S+)", text_models, flags=re.M))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, "\n".join(sorted(supported)) + "\n")
    except OSError:  # a read-only home: list again next time
        pass
    return supported


def check_architecture(architecture: str | None, model: str) -> None:
    """Refuse, before any work, a model whose architecture llama.cpp's converter does not know."""
    # a kept list that lacks it (damaged, edited) is checked against the converter before refusing
    if architecture not in supported_architectures() and architecture not in supported_architectures(ask=True):
        raise ExportError(f"llama.cpp does not support the architecture {architecture} of {model}, so it cannot be "
                          f"exported as GGUF (codelora merge still works)")


def _reason(stderr: str) -> str:
    """The one line of the converter's output that says why it failed."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.search(r"Model (\S+) is not supported", ln)
        if m:
            return f"llama.cpp does not support the architecture {m.group(1)}"
    for ln in reversed(lines):
        if re.match(r"^([A-Za-z_.]*(Error|Exception)\b|ERROR:)", ln):
            return ln
    return lines[-1] if lines else "it exited without saying why"


def convert_model(hf_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    """A transformers model directory (safetensors + tokenizer) -> one GGUF file."""
    _run("convert_hf_to_gguf.py", [str(hf_dir), "--outtype", outtype, "--outfile", str(out_file)], f"the model {hf_dir}")
    return out_file


def convert_lora(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f32") -> Path:
    """A PEFT LoRA folder -> a GGUF LoRA; `base_dir` gives the base's hyperparameters (never the Hub)."""
    _run("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_dir), "--outtype", outtype,
                                     "--outfile", str(out_file)], f"the adapter {adapter_dir}")
    return out_file
