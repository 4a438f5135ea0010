"""Several processes through the real launchers (torchrun, accelerate launch): DDP and FSDP2
(train.distributed), resumes after kill -9 and on another number of processes, two torchrun agents
meeting over c10d on localhost.

Every run trains the tiny model for 8 optimizer steps of 2 micro-batches of 4 rows (2 epochs of 4
steps; gloo on the CPU), LoRA without dropout, so one process with grad_accum 2 computes exactly
what two processes compute, and a checkpoint is taken every 3 steps. Each process of a 2-process
run takes one micro-batch per step and first one validation pass: its n-th loss call is step n - 1.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codelora.io.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, LOSS_LOG, MANIFEST, partial_dir
from cli_helpers import call_cli
from net_helpers import free_port
import warm

RUNNER = Path(__file__).with_name("fault_runner.py")
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ACCELERATE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "launch" / "accelerate_fsdp2.yaml"
TIMEOUT = 300  # every launch ends well inside this; a hang fails the test instead of the suite


def args(model_dir, data_file, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data_file), "--out", str(out), "--max-steps", "8",
            "--batch-size", "4", "--lr", "5e-3", "--lora-r", "4", "--lora-dropout", "0", "--seed", "4",
            "--save-every", "3", *extra]


FSDP = ("--set", "train.distributed=fsdp")


def torchrun(cmd, *launcher, fault=None, rank=None):
    """`torchrun --standalone --nproc_per_node 2 -m codelora CMD` (or the fault runner when `fault`)."""
    target = [str(RUNNER)] if fault else ["-m", "codelora"]
    env = {**ENV, **({"FAULT": fault, "FAULT_RANK": str(rank)} if fault else {})}
    launch = list(launcher) or ["--standalone", "--nproc_per_node", "2"]
    return subprocess.run([TORCHRUN, *launch, *target, *cmd], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env)


def single(cmd, fault=None):
    """One process (the suite's warm start), with grad_accum 2: the micro-batches of a 2-process step."""
    env = {**ENV, **({"FAULT": fault} if fault else {})}
    target = [str(RUNNER)] if fault else ["-m", "codelora"]
    return warm.run([sys.executable, *target, *cmd], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(run_dir):
    return [(e["split"], e["step"], e["loss"]) for e in map(json.loads, (run_dir / LOSS_LOG).read_text().splitlines())]


def assert_same(a: Path, b: Path, atol=1e-5):
    ta, tb = load_file(a / ADAPTER_WEIGHTS), load_file(b / ADAPTER_WEIGHTS)
    assert ta.keys() == tb.keys() and len(ta) == 16
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=0, msg=k)
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb] and len([x for x in la if x[0] == "train"]) == 8
    for x, y in zip(la, lb):
        assert abs(x[2] - y[2]) <= atol * max(1.0, abs(y[2])), (x, y)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The reference runs: FSDP in 2 processes (started by accelerate) and in 1, DDP in 2 (torchrun)."""
    from conftest import make_rows, write_jsonl

    d = tmp_path_factory.mktemp("distributed")
    data = write_jsonl(d / "rows.jsonl", make_rows(40))
    # launched by accelerate with the shipped config: the same result as torchrun's processes must give
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    fsdp2 = ok(subprocess.run([accelerate, "launch", "--config_file", str(ACCELERATE_CONFIG), "--num_processes", "2",
                               "-m", "codelora", *args(tiny_model_dir, data, d / "fsdp2", *FSDP)],
                              capture_output=True, text=True, timeout=TIMEOUT, env=ENV))
    ok(single(args(tiny_model_dir, data, d / "fsdp1", *FSDP, "--set", "train.grad_accum=2")))
    ok(torchrun(args(tiny_model_dir, data, d / "ddp2")))
    return {"dir": d, "data": data, "fsdp2_stderr": fsdp2.stderr}


def test_fsdp_in_two_processes_equals_one_process_and_ddp(runs, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from codelora.data.pipeline import encode, task_data
    from codelora.data.prompts import format_for
    from codelora.config_parse import load_config_file, parse_config
    from codelora.models.loss import validation_loss
    from transformers import AutoTokenizer

    d = runs["dir"]
    assert_same(d / "fsdp2", d / "fsdp1")
    assert_same(d / "fsdp2", d / "ddp2")
    assert "each block sharded over 2 processes" in runs["fsdp2_stderr"]
    assert "adapter checked whole" in runs["fsdp2_stderr"]
    fsdp2, ddp2 = (json.loads((d / name / MANIFEST).read_text()) for name in ("fsdp2", "ddp2"))
    assert fsdp2["distributed"] == "fsdp" and ddp2["distributed"] == "ddp" and fsdp2["processes"] == 2
    sharded = [p["parameter_bytes"] for p in fsdp2["train"]["per_process"]]
    whole = [p["parameter_bytes"] for p in ddp2["train"]["per_process"]]
    assert len(sharded) == 2 and whole[0] == whole[1] and max(sharded) <= 0.52 * whole[0]  # each holds ~half
    assert fsdp2["train"]["whole"]["logits_checked"] and fsdp2["train"]["whole"]["tensors"] == 16
    assert not (d / "fsdp2" / CHECKPOINTS).exists() and not partial_dir(d / "fsdp2").exists()

    # the adapter in plain peft reproduces the run's validation loss
    cfg = parse_config(load_config_file(d / "fsdp2" / "config.yaml"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = encode(task_data(cfg.data, "causal-lm", cfg.seed), format_for("causal-lm", tok, None), cfg.data.max_length)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(d / "fsdp2"))
    loss = validation_loss(model, data.examples_of("validation"), 8, tok.pad_token_id, "cpu")
    assert abs(loss - fsdp2["train"]["val_loss_end"]) <= 1e-5

    r = call_cli("merge", d / "fsdp2", "--out", d / "merged")  # and it merges like any adapter
    assert r.returncode == 0 and (d / "merged" / "model.safetensors").is_file(), r.stderr[-2000:]


def test_fsdp_run_of_a_whole_model_is_checked_and_evaluated(runs, tiny_model_dir, tmp_path):
    """top-K under FSDP: the whole model gathered, checked, reloaded, and `codelora run` evaluates it."""
    config = tmp_path / "top.yaml"
    config.write_text("eval: {limit: 1}\ngenerate: {max_new_tokens: 4}\n")
    cmd = ["run", str(config), *args(tiny_model_dir, runs["data"], tmp_path / "top", *FSDP, "--method", "top-1",
                                     "--save-every", "0")[1:]]
    r = ok(torchrun(cmd))
    assert "model checked whole" in r.stderr and "| eval loss" in r.stdout
    one = tmp_path / "top1"
    ok(single([*args(tiny_model_dir, runs["data"], one, *FSDP, "--method", "top-1", "--save-every", "0"),
               "--set", "train.grad_accum=2"]))
    a, b = load_file(tmp_path / "top" / "model.safetensors"), load_file(one / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert json.loads((tmp_path / "top" / "eval_report.json").read_text())


def test_kill_9_of_one_process_then_resume_on_2_and_on_1_process(runs, tiny_model_dir, tmp_path):
    data, ref = runs["data"], runs["dir"] / "fsdp2"
    out = tmp_path / "killed"
    r = torchrun(args(tiny_model_dir, data, out, *FSDP), fault="loss:6:KILL", rank=1)  # rank 1 dies in step 5
    assert r.returncode != 0
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("codelora: error:"))
    assert "another process died" in line and "resume from checkpoint step-00000003" in line, line
    partial = partial_dir(out)
    assert sorted(p.name for p in (partial / CHECKPOINTS).iterdir()) == ["step-00000003"]
    assert (partial / CHECKPOINTS / "step-00000003" / ".metadata").is_file()  # sharded (DCP)
    shutil.copytree(partial, partial_dir(tmp_path / "on1"))

    ok(torchrun(args(tiny_model_dir, data, out, *FSDP, "--resume")))
    assert_same(out, ref, atol=1e-6)
    one = ok(single(args(tiny_model_dir, data, tmp_path / "on1", *FSDP, "--resume")))  # 2 -> 1 process
    assert "keeps the 2 micro-batches" in one.stderr and "resuming from step-00000003" in one.stderr
    assert_same(tmp_path / "on1", ref)


def test_a_one_process_run_resumes_on_two(runs, tiny_model_dir, tmp_path):
    data, out = runs["data"], tmp_path / "grow"
    cmd = args(tiny_model_dir, data, out, *FSDP, "--set", "train.grad_accum=2")
    r = single(cmd, fault="loss:13:KILL")  # validation, then 2 calls a step: step 6
    assert r.returncode == -9
    r = ok(torchrun([*cmd, "--resume"]))  # 1 -> 2 processes
    assert "resuming from step-00000003" in r.stderr
    assert_same(out, runs["dir"] / "fsdp2")


def test_two_torchrun_agents_meet_over_c10d_and_equal_one_node(runs, tiny_model_dir, tmp_path):
    launch = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "codelora-test", "-m", "codelora",
              *args(tiny_model_dir, runs["data"], tmp_path / "nodes", *FSDP)]
    agents = [subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
              for _ in range(2)]
    results = [a.communicate(timeout=TIMEOUT) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], [err[-2000:] for _, err in results]
    assert_same(tmp_path / "nodes", runs["dir"] / "fsdp2", atol=1e-6)


def test_fsdp_on_the_embedded_model(shared_head, embedded_base, tmp_path):
    """The real SmolLM2-135M in 2 processes at the precision the machine picks: each holds half the weights,
    the adapter is proven whole (plain peft reproduces the sharded logits)."""
    out = tmp_path / "real"
    r = ok(torchrun(["train", "--data", str(shared_head), "--limit", "24", "--out", str(out), "--max-steps", "2",
                     "--batch-size", "2", "--lora-r", "4", "--lr", "5e-3", "--save-every", "0",
                     "--set", "data.max_length=128", *FSDP]))
    assert "each block sharded over 2 processes" in r.stderr and "adapter checked whole" in r.stderr
    train = json.loads((out / MANIFEST).read_text())["train"]
    held = [p["parameter_bytes"] for p in train["per_process"]]
    assert len(held) == 2 and max(held) <= 0.52 * sum(held)
    assert train["whole"]["logits_checked"] and train["whole"]["tensors"] == 4 * 30 * 2
    assert any(t.abs().max() > 0 for k, t in load_file(out / ADAPTER_WEIGHTS).items() if "lora_B" in k)
