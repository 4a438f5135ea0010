"""vLLM's rules for LoRA adapters, encoded here because vLLM cannot be imported on a CPU machine.

Each rule names the vLLM source it comes from (repository github.com/vllm-project/vllm, read in
its main branch). vLLM applies them when it loads an adapter, in
`vllm/lora/worker_manager.py: WorkerLoRAManager._load_adapter`: `PEFTHelper.from_local_dir`
(`vllm/lora/peft_helper.py`), then `PEFTHelper.validate_legal(lora_config)`, then
`LoRAModel.from_local_checkpoint` (`vllm/lora/lora_model.py`). Where vLLM versions differ, the
rule refuses what any recent version refuses (see docs/decisions.md).

`check(cfg, tensor_names, files, architecture)` gives one verdict per rule, in order: the first
failing rule is the one an export refusal names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# vllm/config/lora.py: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]`, the values
# `--max-lora-rank` (LoRAConfig.max_lora_rank, default 16) accepts.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# The module names vLLM accepts in an adapter's tensors, per architecture: WorkerLoRAManager._load_adapter
# expands the model's supported LoRA modules (vllm/lora/utils.py: get_supported_lora_modules, the last
# name of every LinearBase layer plus the model's `embedding_modules`) through its `packed_modules_mapping`;
# LoRAModel.from_local_checkpoint (check_unexpected_modules) refuses any other module name.
# vllm/model_executor/models/llama.py: LlamaForCausalLM has the linear layers qkv_proj, o_proj, gate_up_proj,
# down_proj and packed_modules_mapping {"qkv_proj": [q_proj, k_proj, v_proj], "gate_up_proj": [gate_proj,
# up_proj]}; vllm/model_executor/models/mistral.py: MistralForCausalLM(LlamaForCausalLM), the same layers.
# embed_tokens / lm_head (embedding_modules) are left out: the `embeddings` rule refuses them.
# SmolLM2 (the embedded model) is a LlamaForCausalLM. An architecture not listed is not checked.
_LLAMA = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
TARGET_MODULES = {"LlamaForCausalLM": _LLAMA, "MistralForCausalLM": _LLAMA}

EMBEDDING_MODULES = ("embed_tokens", "lm_head")
# extra-vocabulary files an adapter may carry (vLLM < 0.12 loaded them in LoRAModel.from_local_checkpoint)
NEW_EMBEDDINGS = ("new_embeddings.safetensors", "new_embeddings.bin")
# vllm/lora/peft_helper.py: PEFTHelper._init_is_supported: inits that only set the adapter's first weights
SUPPORTED_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")

PEFT_HELPER = "vllm/lora/peft_helper.py"
FEATURES = f"{PEFT_HELPER}: PEFTHelper._validate_features"
LEGAL = f"{PEFT_HELPER}: PEFTHelper.validate_legal"

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"


@dataclass
class Verdict:
    rule: str
    verdict: str  # pass | fail | not checked
    detail: str  # what was found, and for a failure what to do
    source: str  # the vLLM code the rule comes from

    def to_dict(self) -> dict:
        return asdict(self)


def allowed_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`, None when none does."""
    return next((v for v in MAX_LORA_RANKS if v >= rank), None)


def adapter_rank(cfg: dict) -> int:
    """The largest rank in the adapter: r, or a larger one in rank_pattern (validate_legal's max_rank)."""
    ranks = [cfg.get("r"), *(cfg.get("rank_pattern") or {}).values()]
    return max([r for r in ranks if isinstance(r, int)] or [0])


def lora_module(tensor_name: str) -> str | None:
    """The module a LoRA tensor belongs to, as vllm/lora/utils.py: parse_fine_tuned_lora_name reads it
    (`base_model.model.` dropped, then `.lora_A.weight` / `.lora_B.weight` / `.lora_embedding_A|B`);
    None for a tensor that is no LoRA weight (vLLM raises "... is unsupported LoRA weight")."""
    name = tensor_name.removeprefix("base_model.model.")
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2])
    if len(parts) >= 2 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1])
    return None


def _is_embedding(tensor_name: str) -> bool:
    return any(part in EMBEDDING_MODULES for part in tensor_name.split("."))


def _embedding_module(tensor_name: str) -> str:
    """model.embed_tokens for any tensor of it (LoRA matrices, a saved base_layer, trainable tokens)."""
    parts = tensor_name.removeprefix("base_model.model.").split(".")
    end = next(i for i, p in enumerate(parts) if p in EMBEDDING_MODULES)
    return ".".join(parts[:end + 1])


def check(cfg: dict, tensor_names: list[str], files: list[str], architecture: str | None) -> list[Verdict]:
    """One verdict per rule for an adapter: its adapter_config.json (`cfg`), the tensor names in its
    adapter_model.safetensors, the file names in its folder and its base model's architecture."""
    out = []

    def rule(name: str, source: str, failure: str | None, ok: str, not_checked: str | None = None) -> None:
        verdict = FAIL if failure else (NOT_CHECKED if not_checked else PASS)
        out.append(Verdict(name, verdict, failure or not_checked or ok, source))

    peft_type = cfg.get("peft_type", "LORA")
    rule("peft_type", f"{PEFT_HELPER}: PEFTHelper (LoRA only)",
         peft_type != "LORA" and f"the adapter is a {peft_type} adapter; vLLM serves LoRA adapters only", "LORA")

    missing = [k for k in ("r", "lora_alpha", "target_modules") if cfg.get(k) in (None, "", [])]
    r = cfg.get("r")
    rule("required_fields", f"{PEFT_HELPER}: PEFTHelper.from_dict, __post_init__",
         (f"adapter_config.json lacks {', '.join(missing)}" if missing else
          None if isinstance(r, int) and r > 0 else f"the rank r must be a positive integer, got {r!r}"),
         f"r={r}, lora_alpha={cfg.get('lora_alpha')}, target_modules set")

    rule("dora", f"{FEATURES}; vllm/lora/lora_model.py: LoRAModel.from_lora_tensors",
         cfg.get("use_dora") and "the adapter uses DoRA (use_dora); vLLM does not load DoRA adapters: retrain "
                                 "with lora.use_dora=false, or merge it (codelora merge) and serve the merged model",
         "use_dora is off")

    saved = cfg.get("modules_to_save") or []
    rule("modules_to_save", FEATURES,
         saved and f"the adapter saves whole modules ({', '.join(map(str, saved))}, modules_to_save), which vLLM "
                   f"does not load (it allows only a classifier/score head of a classification model); merge it "
                   f"(codelora merge) and serve the merged model",
         "none")

    bias = cfg.get("bias", "none")
    rule("bias", f"{LEGAL} (bias), _validate_features (lora_bias)",
         (f"the adapter trains biases (bias={bias!r}); vLLM supports only bias='none': retrain with lora.bias=none"
          if bias not in (None, "none") else
          "the adapter has LoRA biases (lora_bias), which vLLM does not support" if cfg.get("lora_bias") else None),
         "bias='none'")

    init = cfg.get("init_lora_weights", True)
    features = [
        isinstance(init, str) and init.lower() not in SUPPORTED_INITS
        and f"init_lora_weights={init!r} (it changes the base weights; convert it to a plain LoRA first)",
        cfg.get("alora_invocation_tokens") and "Activated LoRA (alora_invocation_tokens)",
        cfg.get("layer_replication") and "layer_replication",
        cfg.get("use_bdlora") and "block-diagonal LoRA (use_bdlora)",
        cfg.get("use_qalora") and "QALoRA (use_qalora)",
    ]
    features = [f for f in features if f]
    rule("peft_features", FEATURES,
         features and f"the adapter uses what vLLM does not support: {'; '.join(features)}", "none of them used")

    patterns = [k for k in ("rank_pattern", "alpha_pattern") if cfg.get(k)]
    rule("per_module_patterns", f"{PEFT_HELPER}: PEFTHelper.get_rank_and_scaling, from_dict",
         patterns and f"the adapter sets {' and '.join(patterns)} (per-module ranks/alphas): only the newest vLLM "
                      f"applies them, older ones drop them (PEFTHelper.from_dict) and scale those modules wrongly; "
                      f"retrain with one r and alpha",
         "none")

    rank = adapter_rank(cfg)
    allowed = allowed_max_lora_rank(rank)
    rule("rank", f"{LEGAL}; vllm/config/lora.py: MaxLoRARanks",
         allowed is None and f"the adapter's rank {rank} is above the largest --max-lora-rank vLLM accepts "
                             f"({MAX_LORA_RANKS[-1]}; allowed: {', '.join(map(str, MAX_LORA_RANKS))}); retrain "
                             f"with lora.r <= {MAX_LORA_RANKS[-1]}",
         f"rank {rank}: --max-lora-rank {allowed} (allowed: {', '.join(map(str, MAX_LORA_RANKS))})")

    embedded = sorted({_embedding_module(n) for n in tensor_names if _is_embedding(n)})
    extra = [f for f in NEW_EMBEDDINGS if f in files]
    found = ([f"tensors of {', '.join(embedded)}"] if embedded else []) + \
        ([f"extra vocabulary ({', '.join(extra)})"] if extra else []) + \
        (["trainable tokens (trainable_token_indices)"] if cfg.get("trainable_token_indices") else [])
    rule("embeddings", "vllm/lora/lora_model.py: LoRAModel.from_local_checkpoint; vllm/config/lora.py: "
                       "lora_extra_vocab_size (removed, vLLM PRs #28382, #28545)",
         found and f"the adapter trains the embeddings ({'; '.join(found)}); vLLM no longer loads extra "
                   f"vocabulary and codelora does not export embedding LoRA: retrain without embed_tokens / "
                   f"lm_head in lora.target_modules, or merge it (codelora merge) and serve the merged model",
         "no embedding tensors, no extra vocabulary")

    odd = [n for n in tensor_names if lora_module(n) is None and not _is_embedding(n)]
    rule("lora_weights", "vllm/lora/utils.py: parse_fine_tuned_lora_name",
         odd and f"adapter_model.safetensors holds tensors that are no LoRA weights ({', '.join(odd[:3])}"
                 f"{', ...' if len(odd) > 3 else ''}); vLLM refuses them",
         f"{len(tensor_names)} LoRA tensors")

    modules = sorted({m.rsplit(".", 1)[-1] for n in tensor_names if (m := lora_module(n)) and not _is_embedding(n)})
    supported = TARGET_MODULES.get(architecture or "")
    unsupported = [m for m in modules if supported is not None and m not in supported]
    rule("target_modules", "vllm/lora/lora_model.py: LoRAModel.from_local_checkpoint (check_unexpected_modules); "
                           "vllm/model_executor/models/llama.py: LlamaForCausalLM.packed_modules_mapping",
         unsupported and f"vLLM does not apply LoRA to {', '.join(unsupported)} in {architecture} (it accepts "
                         f"{', '.join(sorted(supported))}); retrain with lora.target_modules among those",
         f"{', '.join(modules)}: all supported in {architecture}",
         supported is None and f"{', '.join(modules)}: the architecture {architecture or '(unknown)'} is not in "
                               f"codelora's table (export/vllm_rules.py: TARGET_MODULES); vLLM checks them when it "
                               f"loads the adapter")
    return out
