"""The shipped training tasks of `codelora improve` (configs/tasks/train_*.jsonl): enough of them,
of several kinds, each reference solution passes its tests in the sandbox and each recorded
wrong solution fails them (the tests are strong), disjoint from the held-out python_basics
tasks and free of 13-gram overlap with HumanEval."""

import difflib
import json
from pathlib import Path

import pytest

from codelora.data.decontaminate import benchmark_ngrams, ngrams
from codelora.evaluation.execution import execute, load_tasks_file

TASKS_DIR = Path(__file__).resolve().parents[2] / "configs" / "tasks"
FILES = sorted(TASKS_DIR.glob("train_*.jsonl"))


def _records():
    return [json.loads(line) for f in FILES for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def records():
    return _records()


def test_enough_tasks_of_several_kinds_in_the_eval_tasks_format(records):
    assert len(FILES) >= 1
    tasks = [t for f in FILES for t in load_tasks_file(f)]  # what `codelora eval --tasks` / improve read
    assert len(tasks) == len(records) >= 150
    ids, names = [r["task_id"] for r in records], [r["entry_point"] for r in records]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)  # no task twice, even reworded
    kinds = {r["kind"] for r in records}
    assert {"strings", "lists", "dicts", "math", "parsing", "recursion", "classes", "algorithms"} <= kinds
    for r in records:
        assert r["solution"].strip() and r["wrong_solutions"], r["task_id"]
        assert r["entry_point"] in r["instruction"], r["task_id"]


def test_reference_solutions_pass_and_wrong_solutions_fail_in_the_sandbox(records):
    tasks = {t.task_id: t for f in FILES for t in load_tasks_file(f)}
    good = execute(list(tasks.values()), {r["task_id"]: [r["solution"]] for r in records})
    failing = [res.task_id for res in good if res.correct != 1]
    assert not failing, failing
    bad = execute(list(tasks.values()), {r["task_id"]: r["wrong_solutions"] for r in records})
    passing = [res.task_id for res in bad if res.correct]
    assert not passing, f"tests too weak: a wrong solution passes {passing}"


def test_disjoint_from_the_held_out_basics_and_from_humaneval(records):
    basics = load_tasks_file(TASKS_DIR / "python_basics.jsonl")
    names = {t.entry_point for t in basics}
    assert not names & {r["entry_point"] for r in records}
    for r in records:
        for t in basics:
            ratio = difflib.SequenceMatcher(None, r["instruction"].lower(), t.instruction.lower()).ratio()
            assert ratio < 0.7, (r["task_id"], t.task_id, ratio)
    bench = benchmark_ngrams()
    overlap = [r["task_id"] for r in records
               if any(not ngrams(r[c]).isdisjoint(bench) for c in ("instruction", "test", "solution"))]
    assert not overlap, f"13-gram overlap with HumanEval: {overlap}"
