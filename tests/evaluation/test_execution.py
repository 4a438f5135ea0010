import json
import re

import pytest

from codelora.errors import DataError
from codelora.evaluation.execution import (Task, execute, humaneval_tasks, load_completions, load_tasks_file,
                                           pass_at_k, sample_for, summarize)

TASKS = [
    {"task_id": "t/add", "instruction": "Write add(a, b).", "entry_point": "add",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "t/rev", "instruction": "Write rev(s) that reverses a string.", "entry_point": "rev",
     "test": "def check(candidate):\n    assert candidate('abc') == 'cba'\n"},
]


def test_pass_at_k_matches_the_closed_form():
    from math import comb

    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (5, 5, 2), (7, 2, 7)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_humaneval_canonical_solutions_pass_and_empty_completions_fail():
    tasks = humaneval_tasks()
    assert len(tasks) == 164
    good = summarize(execute(tasks, {t.task_id: [t.canonical] for t in tasks}))
    assert good["pass@1"] == 1.0 and good["samples"] == 164
    empty = summarize(execute(tasks, {t.task_id: [""] for t in tasks}))
    assert empty["pass@1"] == 0.0 and empty["status"]["passed"] == 0


def test_instruction_tasks_and_chat_answers(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    tasks = load_tasks_file(path)
    answers = {"t/add": ["Here you go:\n```python\ndef add(a, b):\n    return a + b\n```",
                         "```python\ndef add(a, b):\n    return a - b\n```"],
               "t/rev": ["```python\ndef rev(s):\n    return s[::-1]\n```", "def rev(s):\n    return s"]}
    results = execute(tasks, answers, from_chat=True)
    assert [r.correct for r in results] == [1, 1]
    s = summarize(results, ks=(1, 2))
    assert s["pass@1"] == 0.5 and s["pass@2"] == 1.0 and s["samples"] == 4
    lo, hi = s["pass@1_ci95"]
    assert lo <= 0.5 <= hi


def test_chat_answer_that_redefines_a_humaneval_function():
    task = humaneval_tasks(limit=1)[0]
    answer = "Sure:\n```python\n" + task.prompt + task.canonical + "\n```\nThis checks every pair."
    sample = sample_for(task, answer, from_chat=True)
    assert sample.code.count(f"def {task.entry_point}") == 2 and sample.helpers == task.prompt
    assert execute([task], {task.task_id: [answer]}, from_chat=True)[0].correct == 1


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "a", "instruction": "x", "entry_point": "f"}', "missing or empty field(s) test"),
    ("not json", "malformed JSON line"),
])
def test_bad_task_files(tmp_path, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_tasks_file(path)


def test_completions_file_errors(tmp_path):
    tasks = [Task(**{k: v for k, v in TASKS[0].items()})]
    path = tmp_path / "c.jsonl"
    path.write_text('{"task_id": "nope", "completion": "x"}\n')
    with pytest.raises(DataError, match="unknown task_id 'nope'"):
        load_completions(path, tasks)


def test_the_shipped_tasks_file_is_solvable():
    from pathlib import Path

    here = Path(__file__).resolve()
    tasks = load_tasks_file(here.parents[2] / "configs" / "tasks" / "python_basics.jsonl")
    solutions = load_completions(here.parent / "python_basics_solutions.jsonl", tasks)
    assert len(tasks) == len(solutions) == 12
    assert summarize(execute(tasks, solutions))["pass@1"] == 1.0
    wrong = {t.task_id: ["def nothing():\n    pass\n"] for t in tasks}
    assert summarize(execute(tasks, wrong))["pass@1"] == 0.0
