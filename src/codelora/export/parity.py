"""Do two runtimes of one model agree? Fixed probes, their logits compared, one verdict.

The merge gate (export/merge.py: adapter model vs merged model) and the export's file check
(PyTorch vs llama.cpp) run the same probes through `compare_logits` and decide with
`parity_verdict`. Does the GGUF file in llama.cpp behave like the PyTorch model that was
evaluated? Two checks on the probes:
- teacher-forced: the same token ids (codelora's tokenizer, not llama.cpp's) through both
  runtimes; max |logit difference|, per-position KL(PyTorch || llama.cpp) and how often the
  top-1 tokens agree;
- free-running: `greedy_tokens` greedy tokens per probe question in each runtime. f16 weights
  round, so two answers may part where PyTorch's two best tokens are nearly tied: a divergence
  counts as a failure only where PyTorch's top-2 margin is at least `tie_margin`.
"""

from __future__ import annotations

import torch

from codelora.config import ExportConfig, GenerateConfig
from codelora.decoding.batcher import Batcher, Sequence

# Fixed probe prompts: questions and answers of the kind the adapters are trained on, so the
# comparison covers prompt and answer positions alike.
PROBES = [
    ("Write a Python function that checks whether a number is prime.",
     "```python\ndef is_prime(n):\n    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))\n```"),
    ("Reverse a string in Python.", "```python\ns = 'hello'\nprint(s[::-1])\n```"),
    ("Read a CSV file with pandas and print the first rows.",
     "```python\nimport pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.head())\n```"),
    ("Explain what a list comprehension is.", "A list comprehension builds a list from an iterable: [x * x for x in range(5)]."),
]


def probe_ids(fmt) -> list[list[int]]:
    return [fmt.encode({"instruction": q, "input": "", "output": a}).input_ids for q, a in PROBES]


def probe_logits(model, batches: list[list[int]], device: str):
    out = []
    with torch.inference_mode():
        for ids in batches:
            out.append(model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu())
    return out


def compare_logits(reference, candidate) -> dict:
    """max |a - b|, max and mean per-position KL(a || b), and whether all values are finite."""
    finite = all(torch.isfinite(t).all().item() for t in [*reference, *candidate])
    if not finite:
        return {"finite": False, "max_abs_diff": float("nan"), "max_kl": float("nan"), "mean_kl": float("nan"),
                "positions": sum(t.shape[0] for t in reference)}
    diffs, kls = [], []
    for a, b in zip(reference, candidate):
        diffs.append((a - b).abs().max().item())
        la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        kls.append((la.exp() * (la - lb)).sum(-1))
    kl = torch.cat(kls)
    return {"finite": True, "max_abs_diff": max(diffs), "max_kl": kl.max().item(), "mean_kl": kl.mean().item(),
            "positions": int(kl.numel())}


def parity_verdict(stats: dict, limits, non_finite: str, gated: bool = True) -> str | None:
    """Why two runtimes' logits on the probes (`compare_logits`' stats) do not match, or None.

    NaN / Inf always fail, reported as `non_finite`; `limits.max_abs_diff` and `limits.max_kl`
    (MergeConfig's and ExportConfig's fields of the same flags) only when `gated`. The merge gate
    and the export's file check both decide here, so their thresholds read the same.
    """
    if not stats["finite"]:
        return non_finite
    if not gated:
        return None
    if stats["max_abs_diff"] > limits.max_abs_diff:
        return f"max |logit difference| {stats['max_abs_diff']:.3g} is above --max-abs-diff {limits.max_abs_diff:g}"
    if stats["max_kl"] > limits.max_kl:
        return f"max KL {stats['max_kl']:.3g} is above --max-kl {limits.max_kl:g}"
    return None


class Reference:
    """The PyTorch side, computed once and compared with every exported file."""

    def __init__(self, model, fmt, device: str, greedy_tokens: int):
        self.model, self.fmt, self.device = model, fmt, device
        self.ids = probe_ids(fmt)
        self.logits = probe_logits(model, self.ids, device)
        self.prompts = [fmt.prompt_ids(q) for q, _ in PROBES]
        self.greedy = [s.tokens for s in self._greedy(greedy_tokens)]
        self.greedy_tokens = greedy_tokens

    def _greedy(self, n: int) -> list[Sequence]:
        seqs = [Sequence(p, GenerateConfig(max_new_tokens=n, temperature=0.0)) for p in self.prompts]
        return Batcher(self.model, self.fmt.tok, self.fmt.stop_ids, 1, self.device).run(seqs)

    def margin_at(self, prompt: list[int], tokens: list[int]) -> float:
        """PyTorch's top-1 minus top-2 logit for the token after prompt + tokens."""
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt + tokens], device=self.device)).logits[0, -1].float()
        top = logits.topk(2).values
        return float(top[0] - top[1])

    @property
    def needed_context(self) -> int:
        return max(max(map(len, self.ids)), max(map(len, self.prompts)) + self.greedy_tokens) + 8


def _strip_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens


def check_file(ref: Reference, gguf) -> dict:
    """Teacher-forced statistics and greedy agreement of one loaded GgufModel against `ref`."""
    candidate = [gguf.logits(ids) for ids in ref.ids]
    stats = compare_logits(ref.logits, candidate)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref.logits, candidate))
    stats["top1_agreement"] = agree / stats["positions"]
    seqs = [Sequence(p, GenerateConfig(max_new_tokens=ref.greedy_tokens, temperature=0.0)) for p in ref.prompts]
    gguf.run(seqs, ref.fmt.stop_ids)
    stop = ref.fmt.stop_ids
    greedy = []
    for prompt, mine, theirs in zip(ref.prompts, ref.greedy, (s.tokens for s in seqs)):
        a, b = _strip_stop(mine, stop), _strip_stop(theirs, stop)
        if mine == theirs:
            greedy.append({"equal": True, "tokens": len(a)})
            continue
        d = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
        greedy.append({"equal": False, "tokens": len(a), "llama_cpp_tokens": len(b), "first_divergence": d,
                       "pytorch_top2_margin": ref.margin_at(prompt, mine[:d])})
    stats["greedy"] = greedy
    stats["greedy_equal"] = sum(g["equal"] for g in greedy)
    return stats


def verdict(stats: dict, ec: ExportConfig, strict: bool) -> str | None:
    """Why the file must be refused, or None. `strict` (f16, LoRA on f16): the parity gates;
    quantized files are only refused for NaN / Inf (their figures are reported)."""
    why = parity_verdict(stats, ec, "llama.cpp or PyTorch produced NaN/Inf logits", gated=strict)
    if why or not strict:
        return why
    for i, g in enumerate(stats["greedy"]):
        if not g["equal"] and g["pytorch_top2_margin"] >= ec.tie_margin:
            return (f"greedy answer {i + 1} parts from PyTorch's at token {g['first_divergence']} where PyTorch's "
                    f"top-2 margin is {g['pytorch_top2_margin']:.3g} (not a near-tie: --tie-margin {ec.tie_margin:g})")
    return None
