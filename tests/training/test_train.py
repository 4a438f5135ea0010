import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from codelora.config_parse import load_config_file, parse_config
from codelora.io.rundir import ADAPTER_WEIGHTS, CONFIG, LOSS_CURVE, LOSS_LOG, MANIFEST, staged_run_dir
from codelora.training.train import train

RUN_FILES = ["adapter_config.json", "adapter_model.safetensors", "config.yaml", "manifest.json",
             "loss_log.jsonl", "loss_curve.png", "splits.json"]


def tiny_config(model_dir, data_file, out, **train_fields):
    return parse_config({
        "out": str(out),
        "seed": 1,
        "model": {"name": str(model_dir)},
        "data": {"source": str(data_file)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 25, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, **train_fields},
    })


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_train_writes_a_complete_run_that_reloads_exactly(tiny_model_dir, data_file, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, data_file, out)
    with staged_run_dir(out) as d:
        trained = train(cfg, d)
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob("run.partial*"))

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["seed"] == 1 and manifest["model"]["kind"] == "local"
    assert manifest["data"]["rows_used"] == 40 and manifest["data"]["split_sizes"] == {"train": 32, "validation": 4, "test": 4}
    assert len(manifest["data"]["sha256"]) == 64 and manifest["packages"]["peft"]
    assert manifest["parameters"]["trainable"] == 2 * 4 * (128 + 96 + 96 + 128)
    assert parse_config(load_config_file(out / CONFIG)) == cfg

    log = [json.loads(line) for line in (out / LOSS_LOG).read_text().splitlines()]
    steps = [e for e in log if e["split"] == "train"]
    assert [e["step"] for e in steps] == list(range(1, 26))
    assert all(e["tokens_per_s"] > 0 for e in steps)
    val = [e["loss"] for e in log if e["split"] == "validation"]
    assert val[-1] < val[0]  # it learned something held out
    assert (out / LOSS_CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    keys = load_file(out / ADAPTER_WEIGHTS)
    assert keys and all("lora_" in k for k in keys)

    ids = torch.tensor([trained.fmt.prompt_ids("Write a Python function add2(x).")])
    expected = _logits(trained.model, ids)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    assert torch.equal(_logits(plain, ids), expected)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(_logits(base, ids), expected)


def test_same_seed_gives_a_byte_identical_adapter(tiny_model_dir, data_file, tmp_path):
    import hashlib

    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        with staged_run_dir(out) as d:  # dropout on, and a checkpoint, so every RNG use is covered
            train(parse_config({**tiny_config(tiny_model_dir, data_file, out, max_steps=6, save_every=2).to_dict(),
                                "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}), d)
        digests.append(hashlib.sha256((out / ADAPTER_WEIGHTS).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    with staged_run_dir(tmp_path / "c") as d:  # and the hash can tell runs apart
        train(tiny_config(tiny_model_dir, data_file, tmp_path / "c", max_steps=6, lr=1e-3), d)
    assert hashlib.sha256((tmp_path / "c" / ADAPTER_WEIGHTS).read_bytes()).hexdigest() != digests[0]


def test_gradient_accumulation_and_epochs(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "acc"
    cfg = tiny_config(tiny_model_dir, data_file, out, max_steps=None, epochs=2, batch_size=4, grad_accum=3)
    with staged_run_dir(out) as d:
        train(cfg, d)
    stats = json.loads((out / MANIFEST).read_text())["train"]
    assert stats["steps"] == 2 * 3  # 32 train rows / 4 per batch = 8 batches = 3 windows of <=3, twice
    assert stats["epochs"] == 2.0


def test_quantize_without_a_gpu_is_a_clear_error(tiny_model_dir, data_file, tmp_path):
    from cli_helpers import run_cli

    r = run_cli("train", "--model", tiny_model_dir, "--data", data_file, "--out", tmp_path / "q", "--max-steps", "1",
                "--quantize", "4bit", timeout=300)
    assert r.returncode == 1 and "model.quantize=4bit needs a CUDA GPU (bitsandbytes)" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()
