"""The one parity verdict of the merge gate and the export's file check."""

import pytest
import torch

from codelora.config import ExportConfig, MergeConfig
from codelora.export.parity import compare_logits, parity_verdict, verdict


def test_parity_thresholds_are_enforced():
    a = [torch.zeros(3, 5)]
    b = [torch.zeros(3, 5) + torch.tensor([0.0, 0.0, 0.0, 0.0, 0.01])]
    stats = compare_logits(a, b)
    assert stats["max_abs_diff"] == pytest.approx(0.01) and stats["max_kl"] > 0
    assert parity_verdict(stats, MergeConfig(max_abs_diff=0.1, max_kl=1.0), "NaN") is None
    assert "--max-abs-diff" in parity_verdict(stats, MergeConfig(max_abs_diff=0.001, max_kl=1.0), "NaN")
    assert "--max-kl" in parity_verdict(stats, MergeConfig(max_abs_diff=0.1, max_kl=1e-9), "NaN")
    assert parity_verdict(stats, MergeConfig(max_abs_diff=0.001, max_kl=1e-9), "NaN", gated=False) is None
    nan_stats = compare_logits(a, [torch.full((3, 5), float("inf"))])
    assert parity_verdict(nan_stats, MergeConfig(), "NaN/Inf logits", gated=False) == "NaN/Inf logits"


def test_export_verdict_gates_f16_files_and_only_nan_in_quantized_ones():
    a = [torch.zeros(3, 5)]
    stats = compare_logits(a, [torch.zeros(3, 5) + 1.0])  # max |diff| 1.0, above the default 0.5
    stats["greedy"] = [{"equal": False, "first_divergence": 2, "pytorch_top2_margin": 0.5}]
    ec = ExportConfig()
    assert "--max-abs-diff" in verdict(stats, ec, strict=True)
    assert verdict(stats, ec, strict=False) is None  # a quantized file: figures reported, not gated
    stats = compare_logits(a, a) | {"greedy": stats["greedy"]}
    assert "--tie-margin" in verdict(stats, ec, strict=True)
    nan_stats = compare_logits(a, [torch.full((3, 5), float("nan"))])
    assert verdict(nan_stats, ec, strict=False) == "llama.cpp or PyTorch produced NaN/Inf logits"
