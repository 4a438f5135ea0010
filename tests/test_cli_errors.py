"""Bad input gets one line on stderr and a non-zero exit: no traceback, no run directory.

In-process (call_cli): the error paths are the CLI's own code; a fresh process would add only its start-up."""

import pytest

from cli_helpers import call_cli
from conftest import write_jsonl


@pytest.fixture
def no_columns(tmp_path):
    return write_jsonl(tmp_path / "nocols.jsonl", [{"question": "q", "answer": "a"}] * 5)


@pytest.mark.parametrize("case, args, message", [
    ("missing data file", ["--data", "{tmp}/missing.jsonl"], "data file not found"),
    ("no required columns", ["--data", "{nocols}"], "missing required column(s) instruction, input, output"),
    ("unknown model offline", ["--data", "{data}", "--model", "no-such-org/no-such-model"],
     "Hugging Face Hub is unreachable"),
    ("lora rank zero", ["--data", "{data}", "--lora-r", "0"], "lora.r must be at least 1, got 0"),
    ("not a number", ["--lora-r", "abc"], "argument --lora-r: invalid int value"),
    ("unknown field", ["--set", "lora.rank=4"], "unknown config field 'lora.rank'"),
    ("missing config", ["--config", "{tmp}/none.yaml"], "config file not found"),
])
def test_bad_input_is_one_line(case, args, message, tmp_path, data_file, no_columns):
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path, data=data_file, nocols=no_columns) for a in args]
    r = call_cli("train", *args, "--out", out)
    assert r.returncode != 0, case
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codelora: error:"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() and not list(tmp_path.glob("run.partial*"))


def test_ask_with_a_missing_adapter(tmp_path):
    r = call_cli("ask", "Write hello world", "--adapter", tmp_path / "nope")
    assert r.returncode == 1 and r.stderr.strip() == f"codelora: error: adapter directory not found: {tmp_path / 'nope'}"


def test_eval_of_a_non_run(tmp_path):
    r = call_cli("eval", tmp_path)
    assert r.returncode == 1 and "is not a codelora run directory" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["ask", "q", "--max-new-tokens", "0"], "generate.max_new_tokens must be at least 1, got 0"),
    (["ask", "q", "--top-p", "1.5"], "generate.top_p must be in (0, 1], got 1.5"),
    (["ask", "q", "--device", "gpu"], "train.device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"),
    (["serve", "--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps; got 'tpu'"),
    (["serve", "--port", "70000"], "--port must be in [1, 65535], got 70000"),
    (["serve", "--host", "0.0.0.0"], "set an API key"),
    (["merge", "{tmp}", "--out", "{tmp}/m", "--max-kl", "nan"], "--max-kl must be at least 0, got nan"),
    (["eval", "--tasks", "{tmp}/t.jsonl", "--samples", "0"], "eval.samples must be in [1, 1000], got 0"),
    (["train", "--set", "train.scheduler=cosine_annealing"], "train.scheduler must be one of cosine"),
    (["train", "--method", "top-0"], "train.method must be lora, full, top-K"),
])
def test_flag_values_are_checked_by_their_config_field(args, message, tmp_path, monkeypatch):
    monkeypatch.delenv("CODELORA_API_KEY", raising=False)
    r = call_cli(*[a.format(tmp=tmp_path) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stderr
