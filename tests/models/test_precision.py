"""precision auto: bf16 only where this machine's measured bf16 matmuls are fast (probe injected
here for both kinds of CPU); bf16 training agrees with fp32."""

import json

import pytest
import torch

from codelora.config import AUTO_BF16_MIN_SPEEDUP
from codelora.io.rundir import EVAL_REPORT, EVAL_REPORT_MD, LOSS_LOG, MANIFEST, PRECISION
from codelora.models.precision import Probe, choose_precision, matmul_shape, probe_matmul

AMX_LIKE = Probe((512, 576, 1536), 300.0, 1900.0)  # measured on an AMX Xeon (2026-12-01)
AVX2_ONLY = Probe((512, 576, 1536), 160.0, 1.2)  # the AVX2 machines: bf16 ~100x slower


def injected(p: Probe):
    calls = []

    def probe(hidden, inter):
        calls.append((hidden, inter))
        return p
    return probe, calls


def test_auto_takes_bf16_where_the_probe_measures_it_faster():
    probe, calls = injected(AMX_LIKE)
    p = choose_precision("auto", "cpu", (576, 1536), probe)
    assert p.dtype == torch.bfloat16 and calls == [(576, 1536)]
    assert "1900 GFLOP/s vs fp32 300" in p.reason
    assert p.record()["probe"]["speedup"] == pytest.approx(6.33, abs=0.01) and p.record()["chosen"] == "bf16"


def test_auto_keeps_fp32_where_bf16_is_slow_or_not_fast_enough():
    assert choose_precision("auto", "cpu", (576, 1536), injected(AVX2_ONLY)[0]).dtype == torch.float32
    barely = Probe((512, 576, 1536), 100.0, 100.0 * AUTO_BF16_MIN_SPEEDUP * 0.99)
    p = choose_precision("auto", "cpu", (576, 1536), injected(barely)[0])
    assert p.dtype == torch.float32 and f"< {AUTO_BF16_MIN_SPEEDUP}x" in p.reason


def test_tiny_models_stay_fp32_without_probing_and_the_probe_leaves_the_rng_alone():
    probe, calls = injected(AMX_LIKE)
    assert choose_precision("auto", "cpu", (64, 128), probe).dtype == torch.float32 and calls == []
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    probe_matmul.__wrapped__(64, 128, seconds=0.01)  # uncached: really measures
    assert torch.equal(torch.rand(3), expected)


def test_explicit_settings(capsys):
    probe, calls = injected(AVX2_ONLY)
    assert choose_precision("fp32", "cpu", (576, 1536), probe).dtype == torch.float32 and calls == []
    p = choose_precision("bf16", "cpu", (576, 1536), probe)
    assert p.dtype == torch.bfloat16
    assert "bf16 will be slower here" in capsys.readouterr().err and "1 GFLOP/s vs fp32 160" in p.reason
    assert choose_precision("auto", "mps", (576, 1536), probe).dtype == torch.float32 and calls == [(576, 1536)]


def test_the_probe_measures_this_machine_and_shapes_come_from_the_config():
    from transformers import LlamaConfig, T5Config

    p = probe_matmul(64, 128, seconds=0.01)
    assert p.shape == (512, 64, 128) and p.fp32_gflops > 0 and p.bf16_gflops > 0
    assert matmul_shape(LlamaConfig(hidden_size=64, intermediate_size=128)) == (64, 128)
    assert matmul_shape(T5Config(d_model=32, d_ff=64)) == (32, 64)


def test_bf16_training_agrees_with_fp32(tiny_model_dir, data_file, tmp_path):
    """20 steps of the tiny model in each precision: the same loss curve within 2% per step (bf16
    keeps ~3 significant digits; the LoRA weights and the optimizer stay fp32), and the manifest
    says what was chosen and why."""
    from adapters_helpers import train_with_codelora

    logs, manifests = {}, {}
    for precision in ("fp32", "bf16"):
        run = train_with_codelora(tiny_model_dir, data_file, tmp_path / precision, steps=20,
                                  extra=("--set", f"train.precision={precision}", "--set", "train.eval_every=10"))
        logs[precision] = [json.loads(line) for line in (run / LOSS_LOG).read_text().splitlines()]
        manifests[precision] = json.loads((run / MANIFEST).read_text())
    train = {k: [e["loss"] for e in v if e["split"] == "train"] for k, v in logs.items()}
    assert len(train["fp32"]) == len(train["bf16"]) == 20
    assert train["fp32"][-1] < train["fp32"][0] - 0.2  # it learned something, so the curves say something
    for a, b in zip(train["fp32"], train["bf16"]):
        assert abs(a - b) <= 0.02 * a
    assert train["fp32"] != train["bf16"]  # bf16 really ran
    val = {k: [e["loss"] for e in v if e["split"] == "validation"] for k, v in logs.items()}
    assert abs(val["fp32"][-1] - val["bf16"][-1]) <= 0.02 * val["fp32"][-1]
    assert manifests["bf16"]["precision"] == "bfloat16"
    assert manifests["bf16"]["precision_choice"]["setting"] == "bf16"
    assert manifests["fp32"]["precision_choice"] == {"setting": "fp32", "chosen": "fp32", "reason": "asked for",
                                                     "probe": None}


def test_a_bf16_run_is_evaluated_in_fp32_unless_asked(tiny_model_dir, data_file, tmp_path):
    """Trained in bf16, a run is evaluated in eval.precision (fp32 by default) on a base loaded
    again in fp32, so `codelora eval RUN_DIR` reproduces its report exactly; --precision bf16
    evaluates in bf16 (close, not equal). The run records its precision for --resume."""
    from cli_helpers import run_cli

    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("seed: 3\n")
    r = run_cli("run", tmp_path / "c.yaml", "--model", tiny_model_dir, "--data", data_file, "--out", out,
                "--max-steps", "3", "--set", "train.precision=bf16", "--set", "generate.max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluating in fp32 (asked for)" in r.stderr
    report = json.loads((out / EVAL_REPORT).read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["precision"] == "bfloat16" and report["precision"]["chosen"] == "fp32"
    assert "computed in fp32" in (out / EVAL_REPORT_MD).read_text()
    assert json.loads((out / PRECISION).read_text()) == manifest["precision_choice"]
    again = run_cli("eval", out, "--max-new-tokens", "8")
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads((out / EVAL_REPORT).read_text())
    for name in ("base", "adapter"):
        assert redo["models"][name]["eval_loss"] == pytest.approx(report["models"][name]["eval_loss"], abs=1e-6)
    in_bf16 = run_cli("eval", out, "--max-new-tokens", "8", "--precision", "bf16")
    assert in_bf16.returncode == 0, in_bf16.stderr[-3000:]
    bf16 = json.loads((out / EVAL_REPORT).read_text())
    assert bf16["precision"]["chosen"] == "bf16"
    for name in ("base", "adapter"):
        a, b = bf16["models"][name]["eval_loss"], report["models"][name]["eval_loss"]
        assert a != b and a == pytest.approx(b, rel=0.02)
    bad = run_cli("eval", out, "--precision", "fp16")
    assert bad.returncode == 2 and "invalid choice: 'fp16'" in bad.stderr and "Traceback" not in bad.stderr


def test_ask_and_the_engine_generate_in_the_precision_asked(tiny_model_dir, tmp_path):
    """Generation in bf16: the base loads in bf16, a LoRA adapter on it keeps fp32 weights, and
    answers come out; the tiny model (hidden < 256) stays fp32 under auto."""
    from adapters_helpers import save_plain_peft
    from cli_helpers import run_cli
    from codelora.config import GenerateConfig, ModelConfig
    from codelora.serving.engine import Engine, GenerationJob
    from codelora.serving.registry import AdapterRegistry

    save_plain_peft(tiny_model_dir, tmp_path / "reg" / "a", seed=1)
    engine = Engine(ModelConfig(name=str(tiny_model_dir)), AdapterRegistry(tmp_path / "reg"), "cpu", precision="bf16")
    try:
        ids = engine.question_ids("Write add(a, b).")
        got = engine.generate(GenerationJob(ids, "a", GenerateConfig(6)))
        assert 0 < got.completion_tokens <= 6
        dtypes = {n: p.dtype for n, p in engine.model.named_parameters()}
        assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
        assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    finally:
        engine.close()
    auto = Engine(ModelConfig(name=str(tiny_model_dir)), None, "cpu")
    try:
        assert auto.precision.name == "fp32" and "too small" in auto.precision.reason
    finally:
        auto.close()
    r = run_cli("ask", "Write add(a, b).", "--model", tiny_model_dir, "--max-new-tokens", "4", "--precision", "bf16")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    bad = run_cli("ask", "hi", "--model", tiny_model_dir, "--precision", "half")
    assert bad.returncode == 2 and "invalid choice: 'half'" in bad.stderr
