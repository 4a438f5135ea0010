"""Bad input gets one line on stderr and a non-zero exit: no traceback, no run directory."""

import pytest

from cli_helpers import run_cli
from conftest import write_jsonl


@pytest.fixture
def no_columns(tmp_path):
    return write_jsonl(tmp_path / "nocols.jsonl", [{"question": "q", "answer": "a"}] * 5)


@pytest.mark.parametrize("case, args, message", [
    ("missing data file", ["--data", "{tmp}/missing.jsonl"], "data file not found"),
    ("no required columns", ["--data", "{nocols}"], "missing required column(s) instruction, input, output"),
    ("unknown model offline", ["--data", "{data}", "--model", "no-such-org/no-such-model"],
     "Hugging Face Hub is unreachable"),
    ("lora rank zero", ["--data", "{data}", "--lora-r", "0"], "lora.r must be a positive integer, got 0"),
    ("not a number", ["--lora-r", "abc"], "argument --lora-r: invalid int value"),
    ("unknown field", ["--set", "lora.rank=4"], "unknown config field 'lora.rank'"),
    ("missing config", ["--config", "{tmp}/none.yaml"], "config file not found"),
])
def test_bad_input_is_one_line(case, args, message, tmp_path, data_file, no_columns):
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path, data=data_file, nocols=no_columns) for a in args]
    r = run_cli("train", *args, "--out", out, timeout=300)
    assert r.returncode != 0, case
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codelora: error:"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() and not list(tmp_path.glob("run.partial*"))


def test_ask_with_a_missing_adapter(tmp_path):
    r = run_cli("ask", "Write hello world", "--adapter", tmp_path / "nope", timeout=300)
    assert r.returncode == 1 and r.stderr.strip() == f"codelora: error: adapter directory not found: {tmp_path / 'nope'}"


def test_eval_of_a_non_run(tmp_path):
    r = run_cli("eval", tmp_path, timeout=300)
    assert r.returncode == 1 and "is not a codelora run directory" in r.stderr and "Traceback" not in r.stderr
