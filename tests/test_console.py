"""Progress bars and --quiet: a bar with an ETA on a terminal, nothing when stderr is a file or
pipe, with --quiet (CODELORA_QUIET=1) or on a rank other than 0.

The bars are checked in real pseudo-terminals: a child process writes its stderr to a pty, as a
user's shell would, and the test reads what it drew."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import run_cli
from codelora import console
from conftest import make_rows, write_jsonl
from pty_helpers import ETA, run_cli_in_pty, run_in_pty, stages_shown


def quiet_env(**extra) -> dict:
    return {console.QUIET_ENV: "1", **extra}


RANGE_BAR = """
    import time
    from codelora.console import progress
    for _ in progress(range(3), desc="x"):
        time.sleep(0.25)
"""


def test_progress_draws_a_bar_with_an_eta_on_a_terminal():
    drawn = run_in_pty(RANGE_BAR, env={console.QUIET_ENV: ""})
    assert re.search(r"x: +\d+%\|.*\| \d/3 " + ETA, drawn), drawn


@pytest.mark.parametrize("env", [quiet_env(), {"RANK": "1"}], ids=["quiet", "rank-1"])
def test_progress_draws_nothing_when_quiet_or_not_rank_0(env):
    assert run_in_pty(RANGE_BAR, env={console.QUIET_ENV: "", **env}) == ""


def test_progress_is_silent_when_stderr_is_not_a_terminal(tmp_path):
    log = tmp_path / "stderr.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", textwrap.dedent(RANGE_BAR)], stderr=f, check=True, timeout=60,
                       env={**os.environ, console.QUIET_ENV: ""})
    assert log.read_text() == ""
    assert console.progress(range(3)).disable  # pytest captures stderr: not a terminal here either


def test_quiet_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(console.QUIET_ENV, raising=False)
    assert not console.quiet()
    monkeypatch.setenv(console.QUIET_ENV, "0")
    assert not console.quiet()
    monkeypatch.setenv(console.QUIET_ENV, "1")  # what set_quiet(True) writes, for child processes
    assert console.quiet() and console.progress(range(3)).disable


# -- --quiet on the command line ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--quiet", "data", "prepare", "--out", "x"], ["data", "prepare", "--quiet", "--out", "x"],
    ["train", "--quiet"], ["run", "c.yaml", "--quiet"], ["data", "report", "--quiet"], ["eval", "r", "--quiet"],
    ["ask", "q", "--quiet"], ["merge", "r", "--out", "o", "--quiet"], ["export", "r", "--out", "o", "--quiet"],
    ["serve", "--quiet"], ["sweep", "s.yaml", "--quiet"],
])
def test_every_subcommand_accepts_quiet(argv):
    from codelora.cli import build_parser

    assert build_parser().parse_args(argv).quiet is True


def test_without_quiet_the_flag_is_false():
    from codelora.cli import build_parser

    assert build_parser().parse_args(["data", "prepare", "--out", "x"]).quiet is False


@pytest.mark.parametrize("where", ["top", "sub"])
def test_data_prepare_quiet_prints_no_progress(tmp_path, where):
    data = write_jsonl(tmp_path / "rows.jsonl", make_rows(40))
    args = ["data", "prepare", "--data", data, "--out", tmp_path / "prepared"]
    loud = run_cli(*args, "--overwrite", timeout=120)
    assert loud.returncode == 0 and "codelora: wrote" in loud.stderr, loud.stderr[-2000:]
    quiet = run_cli(*(["--quiet", *args] if where == "top" else [*args, "--quiet"]), "--overwrite", timeout=120)
    assert quiet.returncode == 0 and (tmp_path / "prepared" / "train.jsonl").is_file()
    assert quiet.stderr == "", quiet.stderr[-2000:]


def test_data_prepare_bars_on_a_terminal_and_none_with_quiet(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", make_rows(40))
    argv = ["data", "prepare", "--data", data, "--out", tmp_path / "p", "--overwrite"]
    drawn = run_cli_in_pty(*argv)
    for desc in ("validating", "cleaning", "near duplicates", "split audit: hashing", "split audit: matching"):
        assert re.search(re.escape(desc) + r": +\d+%\|.*\| \d+/\d+ \[", drawn), (desc, drawn)
    assert "row/s" in drawn and "codelora: wrote" in drawn
    assert run_cli_in_pty(*argv, "--quiet") == ""


# -- evaluation: generation and code execution ------------------------------------------------------

GENERATE = """
    import sys, time
    from conftest import build_tiny_model, build_tokenizer, make_rows
    from codelora.config import EvalConfig, GenerateConfig
    from codelora.data.prompts import PromptFormat
    from codelora.decoding.generate import generate_answers
    from codelora.evaluation.compare import evaluate_model

    tok = build_tokenizer()
    model, fmt = build_tiny_model(tok), PromptFormat(tok)
    gen = GenerateConfig(max_new_tokens=6, temperature=0.0)
    slow = lambda seq, piece: time.sleep(0.03)  # answers slow enough for the bar to be redrawn
    questions = [r["instruction"] for r in make_rows(4)]
    generate_answers(model, fmt, questions, gen, 2, "cpu", on_update=slow, progress_desc="adapter: generating")
    print("@@ask@@", file=sys.stderr, flush=True)
    generate_answers(model, fmt, questions[:2], gen, 1, "cpu", on_update=slow)  # ask's call: no bar
    print("@@eval@@", file=sys.stderr, flush=True)
    rows = make_rows(3)
    evaluate_model(model, fmt, rows, [fmt.encode(r) for r in rows], EvalConfig(batch_size=2), gen,
                   tok.pad_token_id, "cpu", name="base")
    print("@@exec@@", file=sys.stderr, flush=True)
    from codelora.evaluation.exec_eval import _generate
    from codelora.evaluation.execution import Task

    tasks = [Task(f"t{i}", q, "f", "") for i, q in enumerate(questions[:2])]
    _generate(model, fmt, tasks, EvalConfig(batch_size=2, samples=2), gen, "cpu", 0, "lora-x")
"""


def test_generation_bar_names_the_model_and_ask_has_none():
    drawn = run_in_pty(GENERATE, env={console.QUIET_ENV: ""})
    first, rest = drawn.split("@@ask@@")
    ask, rest = rest.split("@@eval@@")
    evaluation, execution = rest.split("@@exec@@")
    assert re.search(r"adapter: generating: +\d+%\|.*\| [1-4]/4 " + ETA + r", *[\d.?]+(answer/s|s/answer)\]", first), first
    assert ask.strip() == ""
    assert re.search(r"base: generating: +\d+%\|.*\| \d/3 \[", evaluation), evaluation
    for i in (1, 2):  # pass@k's samples: one bar per round, named by model and round
        assert re.search(rf"lora-x: generating \(sample {i}/2\): +\d+%\|.*\| \d/2 \[", execution), execution


EXECUTE = """
    from codelora.evaluation.execution import Task, execute, summarize

    check = "def check(candidate):\\n    assert candidate(2) == 4\\n"
    tasks = [Task(f"t{i}", "double x", "double", check) for i in range(3)]
    slow = "```python\\nimport time\\ntime.sleep(0.3)\\ndef double(x):\\n    return 2 * x\\n```"
    results = execute(tasks, {t.task_id: [slow, slow] for t in tasks}, from_chat=True, desc="adapter: running")
    assert summarize(results)["status"]["passed"] == 6
"""


def test_execution_bar_moves_as_programs_finish():
    drawn = run_in_pty(EXECUTE, env={console.QUIET_ENV: ""})
    counts = {int(n) for n in re.findall(r"adapter: running: +\d+%\|.*?\| (\d)/6 " + ETA, drawn)}
    assert counts and max(counts) >= 2, drawn
    assert re.search(r"program/s|s/program", drawn), drawn


# -- merge: a bar over its stages -------------------------------------------------------------------


def test_merge_shows_its_stages(tiny_model_dir, tmp_path):
    from adapters_helpers import save_plain_peft

    adapter = save_plain_peft(tiny_model_dir, tmp_path / "adapter")
    drawn = run_cli_in_pty("merge", adapter, "--out", tmp_path / "merged")
    assert stages_shown(drawn, "merge") == ["loading the base model", "loading the adapter", "merging", "parity check",
                                            "saving"], drawn
    lines = re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drawn))
    assert any(line.startswith("codelora: merge parity gate passed") for line in lines)  # printed above the bar
    assert (tmp_path / "merged" / "model.safetensors").is_file()
