"""Set-up of a training run: seed, device and processes, precision, data, base model, and the
training method (LoRA adapters, or which weights of the model train)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codelora.config import RunConfig, parse_method
from codelora.console import say
from codelora.data.labels import label_names
from codelora.errors import ConfigError
from codelora.data.pipeline import PreparedData, encode, task_data
from codelora.data.prompts import PromptFormat, format_for
from codelora.models.lora import apply_lora, count_parameters, load_adapter
from codelora.models.methods import set_trainable
from codelora.models.precision import Precision, fp32_attention_on_cpu, precision_for
from codelora.models.sources import ModelSource, empty_base, load_base, pick_device
from codelora.training.distributed import Dist, init_distributed
from codelora.training.sharding import local_parameter_bytes, shard


@dataclass
class Setup:
    """A run ready to train: the model with its method applied, its data, and where it runs."""

    model: object  # peft.PeftModel for LoRA, else the transformers model
    tokenizer: object
    source: ModelSource
    fmt: PromptFormat  # or Seq2SeqFormat / ClassFormat, per model.task
    data: PreparedData
    labels: list[str] | None  # the class names of a classification task
    device: str
    dtype: torch.dtype
    dist: Dist
    trainable: int  # parameters that train
    total: int  # parameters of the model (with its adapters)
    precision: Precision  # what was chosen for train.precision, and why
    root: object = None  # train.distributed fsdp: the sharding.LossModule the steps run (around `model`)

    @property
    def sharded(self) -> bool:
        return self.root is not None


def set_up(cfg: RunConfig, started_with: dict | None = None) -> Setup:
    """Everything before the first step, in a fixed order: the seeded RNGs are used in this order.
    `started_with`: the precision record of the run being resumed (it keeps its precision)."""
    import transformers

    transformers.set_seed(cfg.seed)  # python, numpy and torch RNGs: data order and LoRA init
    device, dist = pick_processes(cfg.train.device, cfg.train.dist_timeout_s)
    check_distributed(cfg, device)
    task = cfg.model.task
    curated = task_data(cfg.data, task, cfg.seed)  # before the model: bad data fails in seconds, not after a model load
    labels = label_names(curated.rows) if task == "classification" else None
    precision = precision_for(cfg.train.precision, cfg.model, device) if started_with is None else Precision(
        torch.bfloat16 if started_with["chosen"] == "bf16" else torch.float32, started_with["setting"],
        f"{started_with['chosen']}, as when the run started ({started_with['reason']})")
    if dist.enabled:  # measured per process, but every process must compute alike: process 0's choice
        precision = dist.gather(precision)[0]
    dtype = precision.dtype
    model, tokenizer, source = load_model(cfg, device, dtype, labels, dist)
    fp32_attention_on_cpu(model, precision, device)
    say(f"model {source.name} ({source.kind}) on {device}, {precision.name} ({precision.reason})"
        + (f", {cfg.model.quantize} quantized" if cfg.model.quantize != "none" else "")
        + (f", {dist.world} processes" if dist.enabled else ""))
    fmt = format_for(task, tokenizer, labels)
    data = encode(curated, fmt, cfg.data.max_length)
    say_data(curated.source.source, data)
    model = apply_method(model, cfg, source.loadable_name)
    trainable, total = count_parameters(model)
    say(f"{describe_method(cfg)}: trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        + (f"; labels: {', '.join(labels)}" if labels else ""))
    root = None
    if cfg.train.distributed == "fsdp":
        root = shard(model, dist, dtype, cfg.train.fsdp_cpu_offload, device, from_process_0(cfg, dist))
        where = f"each block sharded over {dist.world} processes" if dist.enabled else "one process, nothing to shard"
        say(f"fsdp: {where}; this process holds {local_parameter_bytes(model) / 1e6:,.1f} MB of weights")
    return Setup(model, tokenizer, source, fmt, data, labels, device, dtype, dist, trainable, total, precision, root)


def from_process_0(cfg: RunConfig, dist: Dist) -> bool:
    """Whether process 0 alone loads the weights (fsdp over several processes; a 4-bit base loads on each GPU)."""
    return cfg.train.distributed == "fsdp" and dist.enabled and cfg.model.quantize == "none"


def check_distributed(cfg: RunConfig, device: str) -> None:
    """What train.distributed fsdp cannot do, refused in one line before anything loads."""
    tc = cfg.train
    if tc.fsdp_cpu_offload and tc.distributed != "fsdp":
        raise ConfigError("train.fsdp_cpu_offload goes with train.distributed: fsdp")
    if tc.distributed != "fsdp":
        return
    if tc.fsdp_cpu_offload and not device.startswith("cuda"):
        raise ConfigError(f"train.fsdp_cpu_offload: the weights already live in CPU memory on {device}; "
                          f"set it to false (it is for GPUs)")
    if cfg.model.quantize == "8bit":
        raise ConfigError("train.distributed=fsdp shards 4-bit bases (model.quantize: 4bit, QLoRA), not 8-bit ones; "
                          "use model.quantize: 4bit or train.distributed: ddp")
    if cfg.model.task != "causal-lm":
        raise ConfigError(f"train.distributed=fsdp shards causal language models; model.task={cfg.model.task} "
                          f"trains with train.distributed: ddp")


def pick_processes(device_setting: str, timeout_s: int) -> tuple[str, Dist]:
    """The device, and the process group when torchrun / accelerate started this process (one GPU per rank)."""
    device = pick_device(device_setting)
    dist = init_distributed(device, timeout_s)
    if dist.enabled and device == "cuda":
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    return device, dist


def load_model(cfg: RunConfig, device: str, dtype: torch.dtype, labels: list[str] | None, dist: Dist):
    """The base model and its tokenizer, ready for k-bit training or gradient checkpointing where asked.

    Sharded over several processes (fsdp, not quantized), process 0 alone reads the weights, into CPU
    memory, while the others build the structure on the meta device: `sharding.shard` then hands each
    process its shards of process 0's weights, so no process but 0 ever holds the whole model.
    """
    # Weights that train stay fp32 (bf16 runs under autocast): a bf16 weight drops updates below
    # 1/256 of its size, i.e. most AdamW steps at full fine-tuning learning rates.
    trains_base = parse_method(cfg.train.method)[0] in ("full", "top")
    dtype = torch.float32 if trains_base else dtype
    sharded = cfg.train.distributed == "fsdp"
    if from_process_0(cfg, dist) and not dist.main:
        dist.barrier()  # process 0 first: it may convert the embedded model into the cache
        model, tokenizer, source = empty_base(cfg.model, dtype)
    else:
        model, tokenizer, source = load_base(cfg.model, "cpu" if from_process_0(cfg, dist) else device, dtype=dtype,
                                             labels=labels, sharded=sharded)
        if from_process_0(cfg, dist):
            dist.barrier()
    if cfg.model.quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer, source


def say_data(source: str, data: PreparedData) -> None:
    sizes = data.summary()["split_sizes"]
    rep = data.curated.split_report
    say(f"data {source}: {len(data.rows)} rows -> train {sizes['train']}, "
        f"validation {sizes['validation']}, test {sizes['test']}"
        + (f" ({rep['grouped_rows']} related rows kept together in {rep['groups']} groups)" if "groups" in rep else ""))


def apply_method(model, cfg: RunConfig, base_model: str):
    """LoRA adapters on the model (a new peft model), or mark which of its own weights train."""
    if cfg.train.method == "lora":
        if cfg.lora.init_from:  # continue training an adapter (its own settings apply)
            return load_adapter(model, cfg.lora.init_from, trainable=True)
        return apply_lora(model, cfg.lora, base_model=base_model, task=cfg.model.task)
    set_trainable(model, cfg.train.method, cfg.model.task)
    return model


def describe_method(cfg: RunConfig) -> str:
    kind, k = parse_method(cfg.train.method)
    if kind == "full":
        return "full fine-tuning"
    if kind == "top":
        return f"top-{k}: the last {k} blocks and the head train"
    if kind == "none":
        return "method none: no training (baseline)"
    lo = cfg.lora
    if lo.init_from:
        return f"LoRA from {lo.init_from} (its r, alpha and targets)"
    extras = [name for name, on in (("rsLoRA", lo.use_rslora), ("DoRA", lo.use_dora)) if on]
    if lo.layers_to_transform is not None:
        extras.append(f"blocks {lo.layers_to_transform}")
    return f"LoRA r={lo.r} alpha={lo.alpha} on {lo.target_modules}{' (' + ', '.join(extras) + ')' if extras else ''}"
