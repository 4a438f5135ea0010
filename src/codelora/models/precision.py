"""fp32 or bf16: chosen from what this machine does, measured, not assumed.

CPUs differ: without bf16 instructions a bf16 matmul is ~100x slower than fp32; with AVX512-BF16
it is 2-4x faster, with AMX 3.5-6.5x. `auto` therefore times the model's own largest matmul shape
(tokens x hidden x intermediate, the MLP's) in both precisions for a fraction of a second and
takes bf16 only when it wins by `AUTO_BF16_MIN_SPEEDUP` (the matmul gain must pay for the casts
and the kernels that do not speed up). On a GPU, `auto` takes bf16 where CUDA supports it. The
choice, with what was measured, goes into the run manifest.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch

from codelora.config import AUTO_BF16_MIN_SPEEDUP
from codelora.console import say
from codelora.models.sources import resolve_model

PROBE_TOKENS = 512  # rows of the probe matmul: a micro-batch's worth of tokens
# below this hidden size the matmuls are too small for bf16 to pay (measured ~1x at hidden 32-64),
# and the probe of such tiny products is mostly timing noise
MIN_BF16_HIDDEN = 256


@dataclass(frozen=True)
class Probe:
    shape: tuple[int, int, int]  # (tokens, hidden, intermediate)
    fp32_gflops: float
    bf16_gflops: float

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    setting: str  # auto | fp32 | bf16
    reason: str
    probe: Probe | None = None

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def record(self) -> dict:
        """For the manifest."""
        return {"setting": self.setting, "chosen": self.name, "reason": self.reason,
                "probe": None if self.probe is None else {**asdict(self.probe), "speedup": round(self.probe.speedup, 2)}}


def _gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)  # its own generator: the run's seeded RNG stays untouched
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    a @ b  # first call: kernel selection, packing
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


@functools.cache
def probe_matmul(hidden: int, intermediate: int, seconds: float = 0.15) -> Probe:
    """fp32 and bf16 GFLOP/s of this CPU on one model-shaped product, the best of two alternations
    (so a passing slowdown of the machine hits both)."""
    shape = (PROBE_TOKENS, hidden, intermediate)
    fp32 = bf16 = 0.0
    for _ in range(2):
        fp32 = max(fp32, _gflops(*shape, torch.float32, seconds))
        bf16 = max(bf16, _gflops(*shape, torch.bfloat16, seconds))
    return Probe(shape, round(fp32, 1), round(bf16, 1))


def matmul_shape(model_config) -> tuple[int, int]:
    """(hidden, intermediate) of a transformers config (decoder, T5-style or BERT-style)."""
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "d_model", None) or 768
    inter = getattr(model_config, "intermediate_size", None) or getattr(model_config, "d_ff", None) or 4 * hidden
    return int(hidden), int(inter)


def precision_for(setting: str, model_cfg, device: str) -> Precision:
    """`setting` (auto | fp32 | bf16) for the model of `model_cfg` (a ModelConfig) on `device`; on a
    CPU measured on the model's own matmul shape, read from its config."""
    from transformers import AutoConfig

    shape = (768, 3072)  # a model whose config cannot be read here fails to load right after, with its own message
    if setting != "fp32" and device.startswith("cpu"):
        source = resolve_model(model_cfg)
        try:
            shape = matmul_shape(AutoConfig.from_pretrained(source.path, revision=source.revision,
                                                            trust_remote_code=model_cfg.trust_remote_code))
        except (OSError, ValueError):
            pass
    return choose_precision(setting, device, shape)


def choose_precision(setting: str, device: str, shape: tuple[int, int], probe=probe_matmul) -> Precision:
    """The compute precision for `setting` on `device`; `probe(hidden, intermediate)` measures the CPU."""
    if setting == "fp32":
        return Precision(torch.float32, setting, "asked for")
    if not device.startswith("cpu"):
        if setting == "bf16":
            return Precision(torch.bfloat16, setting, "asked for")
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, setting, "this GPU supports bf16")
        return Precision(torch.float32, setting, f"no bf16 path on {device}")
    if setting == "auto" and shape[0] < MIN_BF16_HIDDEN:
        return Precision(torch.float32, setting, f"hidden size {shape[0]} < {MIN_BF16_HIDDEN}: too small for bf16 to pay")
    p = probe(*shape)
    measured = (f"bf16 matmuls ran at {p.bf16_gflops:.0f} GFLOP/s vs fp32 {p.fp32_gflops:.0f} "
                f"({p.speedup:.2f}x) on this CPU, shape {'x'.join(map(str, p.shape))}")
    if setting == "bf16":
        if p.speedup < 1:
            say(f"warning: precision bf16 on a CPU: {measured}; bf16 will be slower here")
        return Precision(torch.bfloat16, setting, f"asked for; {measured}", p)
    if p.speedup >= AUTO_BF16_MIN_SPEEDUP:
        return Precision(torch.bfloat16, setting, f"{measured} >= {AUTO_BF16_MIN_SPEEDUP}x", p)
    return Precision(torch.float32, setting, f"{measured} < {AUTO_BF16_MIN_SPEEDUP}x", p)


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention computed in fp32 for bf16 inputs, its output cast back."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):  # autocast would cast the inputs back to bf16
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


def fp32_attention_on_cpu(model, precision: Precision, device: str) -> None:
    """bf16 on a CPU: keep attention in fp32. torch's bf16 flash-attention backward on CPU took
    twice the fp32 time (0.73 s vs 0.28 s per batch-8 step of SmolLM2, profiled), eating a fifth of
    the matmuls' gain; the casts cost ~2%."""
    if precision.dtype != torch.bfloat16 or not device.startswith("cpu"):
        return
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    from transformers import AttentionInterface

    AttentionInterface.register("sdpa_fp32", _sdpa_in_fp32)
    model.set_attn_implementation("sdpa_fp32")
