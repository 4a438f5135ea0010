"""`codelora improve CONFIG.yaml`: learn from execution (rejection-sampling fine-tuning, a.k.a.
expert iteration). Read top to bottom:

    set up        the start (a run directory with its adapter, or a base model), tasks, held-out suites
    round 0       evaluate the start (and the base) on the held-out suites: greedy pass@1
    round r       sample k answers per training task at temperature T   (round-r/samples/, chunked)
                  run them in the sandbox                               (round-r/exec/, chunked)
                  keep the passing ones: deduplicated, at most m a task  (round-r/data/: a prepared dataset)
                  fine-tune the adapter on them plus original rows       (round-r/adapter/: a codelora run)
                  evaluate it on the held-out suites                     (round-r/eval/<suite>/)
    final         sample the last model on the training tasks (its pass@k)   (final/)
    report        report.md, report.json, pass_at_1.png

Every stage writes its result atomically and is skipped when its result exists, so running the
same command again after a kill -9 continues where it stopped: sampling and execution go by
fixed chunks of tasks (each chunk seeded from its own position, so a resumed chunk is identical);
training resumes from its newest checkpoint like `codelora run --resume`.
"""

from __future__ import annotations

import copy
import difflib
import glob
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from codelora.config import GenerateConfig, ImproveConfig
from codelora.config_parse import load_config_file, parse_config, parse_improve_config, set_dotted, set_improve_field
from codelora.console import say
from codelora.data.clean import extract_code
from codelora.data.pipeline import instruction_data
from codelora.data.prompts import PromptFormat
from codelora.decoding.generate import generate_answers
from codelora.errors import ConfigError
from codelora.evaluation.exec_eval import evaluate_models, load_suite, require_execution_flag
from codelora.evaluation.execution import Task, execute, load_tasks_file, pass_at_k
from codelora.evaluation.sandbox import Limits
from codelora.experiments.improve_report import plot_rounds, render_markdown
from codelora.experiments.run import RunOptions, run
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import (EXEC_REPORT, MANIFEST, REPORT, REPORT_MD, ChunkedStage, RunDir, continued_dir,
                                has_checkpoint, partial_dir, stage_seconds, staged_run_dir)
from codelora.models.lora import load_adapter
from codelora.models.precision import precision_for
from codelora.models.sources import load_base, pick_device

CONFIG_NAME = "improve.yaml"
PASSED = "passed.json"  # exec/: task_id -> passed per answer
TRAINING = "training.json"  # a round with no passing answer: why its model is the previous one


@dataclass
class Plan:
    """What every stage needs: the config, the resolved run config, tasks and suites."""

    cfg: ImproveConfig
    out: Path
    run_cfg: dict  # the run config each round's training starts from (a mapping, as in YAML)
    start_adapter: str | None
    tasks: list[Task]
    heldout: dict[str, list[Task]]  # suite name -> tasks
    chunks: list[list[Task]] = field(default_factory=list)  # tasks per sampling/execution chunk

    def round_dir(self, r: int | str) -> Path:
        return self.out / (r if isinstance(r, str) else f"round-{r}")


def improve(cfg: ImproveConfig, allow_code_execution: bool = False, overwrite: bool = False) -> dict:
    """Run (or continue) the rounds of `cfg`; returns report.json's content."""
    require_execution_flag(allow_code_execution)
    plan = set_up(cfg, overwrite)
    evaluate_round(plan, 0, plan.start_adapter)
    adapter = plan.start_adapter
    for r in range(1, cfg.rounds + 1):
        answers = sample(plan, r, adapter)
        passed = run_answers(plan, r, answers)
        pairs = select(plan, r, answers, passed)
        adapter = fine_tune(plan, r, adapter, pairs)
        evaluate_round(plan, r, adapter)
        write_report(plan)
    if cfg.measure_final:
        run_answers(plan, "final", sample(plan, "final", adapter))
    report = write_report(plan)
    say(f"wrote {plan.out}/report.md, report.json and pass_at_1.png")
    return report


# --- set up -----------------------------------------------------------------------------------


def set_up(cfg: ImproveConfig, overwrite: bool) -> Plan:
    out = Path(cfg.out)
    start = Path(cfg.start) if cfg.start else None
    if start is not None:
        run = RunDir(start)
        if not run.has_config() or not run.adapter_config.is_file():
            raise ConfigError(f"improve.start: {start} is not a LoRA run directory of codelora (config.yaml and "
                              f"adapter_config.json are needed)")
        run_cfg = load_config_file(run.config)
    else:
        run_cfg = load_config_file(cfg.run_config)
    method = (run_cfg.get("train") or {}).get("method", "lora")
    task = (run_cfg.get("model") or {}).get("task", "causal-lm")
    if method != "lora" or task != "causal-lm":
        raise ConfigError(f"improve trains LoRA adapters of causal LMs; the start has train.method {method}, "
                          f"model.task {task}")
    files = sorted({p for pattern in cfg.tasks for p in (glob.glob(pattern) or [pattern])})
    tasks = [t for f in files for t in load_tasks_file(f)]
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"improve.tasks: task ids repeat across files: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    heldout = {}
    for spec in cfg.heldout:
        suite, _, limit = spec.partition(":")
        heldout[Path(suite).stem] = load_suite(suite, int(limit) if limit else None)
    overlap = set(ids) & {t.task_id for suite in heldout.values() for t in suite}
    if overlap:
        raise ConfigError(f"improve: held-out suites share tasks with the training tasks: {sorted(overlap)[:5]}")
    chunk = max(1, cfg.eval.batch_size * 2 // cfg.samples)  # about two batches of sequences per chunk
    plan = Plan(cfg, out, run_cfg, str(start) if start else None, tasks, heldout,
                [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)])
    parse_config(_round_config(plan, 1, plan.start_adapter, out / "check"))  # a bad `set` fails now
    if continued_dir(out, CONFIG_NAME, _settings(cfg), overwrite, "an improve run"):  # other settings: --overwrite
        say(f"improve: continuing {out}")
    say(f"improve: {len(tasks)} training tasks from {len(files)} file(s), held-out {', '.join(heldout)}, "
        f"{cfg.rounds} round(s) from {start or 'the base model ' + str((run_cfg.get('model') or {}).get('name'))}")
    return plan


def _settings(cfg: ImproveConfig) -> str:
    """The config as kept in OUT/improve.yaml: rerunning with the same one continues the run."""
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def _model_cfg(plan: Plan):
    return parse_config(_round_config(plan, 1, plan.start_adapter, plan.out / "check")).model


# --- sampling and execution -------------------------------------------------------------------


def _load(plan: Plan, adapter: str | None, precision: str):
    model_cfg = _model_cfg(plan)
    device = pick_device(plan.cfg.device)
    chosen = precision_for(precision, model_cfg, device)
    model, tokenizer, _ = load_base(model_cfg, device, dtype=chosen.dtype)
    if adapter:
        model = load_adapter(model, adapter)
    return model, PromptFormat(tokenizer), device


def sample(plan: Plan, r: int | str, adapter: str | None) -> dict[str, list[str]]:
    """k answers per training task from the model after round r-1, chunk by chunk."""
    d = plan.round_dir(r) / "samples"
    done = d / "samples.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    stage = ChunkedStage(d, len(plan.chunks), "sampling")
    out = _sample_chunks(plan, r, adapter, stage) if stage.pending() else stage.merged()
    write_json_atomic(done, out)
    return out


def _sample_chunks(plan: Plan, r: int | str, adapter: str | None, stage: ChunkedStage) -> dict[str, list[str]]:
    """The pending chunks of sampling; the model is loaded once for them (model loading not timed)."""
    cfg, k = plan.cfg, plan.cfg.samples
    gen = cfg.generate
    model, fmt, device = _load(plan, adapter, cfg.sample_precision)

    def chunk(i: int, progress: str) -> dict[str, list[str]]:
        questions = [t.instruction for t in plan.chunks[i] for _ in range(k)]
        answers = generate_answers(model, fmt, questions, gen, cfg.eval.batch_size, device, seed=_seed(plan, r, i),
                                   progress_desc=f"{_name(r)}: sampling {progress}")
        return {t.task_id: answers[j * k:(j + 1) * k] for j, t in enumerate(plan.chunks[i])}

    return stage.run(chunk)  # the model is freed on return, before the sandbox runs


def _seed(plan: Plan, r: int | str, chunk: int) -> int:
    r_index = plan.cfg.rounds + 1 if r == "final" else r
    return plan.cfg.seed * 1_000_003 + r_index * 10_007 + chunk * 101


def _name(r: int | str) -> str:
    return r if isinstance(r, str) else f"round {r}"


def run_answers(plan: Plan, r: int | str, answers: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Each answer in the sandbox; task_id -> passed per answer."""
    d = plan.round_dir(r) / "exec"
    done = d / PASSED
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    limits = Limits.of(plan.cfg.eval)

    def chunk(i: int, progress: str) -> dict[str, list[str]]:
        results = execute(plan.chunks[i], answers, limits, from_chat=True, desc=f"{_name(r)}: running {progress}")
        return {res.task_id: [o.status for o in res.outcomes] for res in results}

    statuses = ChunkedStage(d, len(plan.chunks), "execution").run(chunk)
    passed = {tid: [s == "passed" for s in v] for tid, v in statuses.items()}
    write_json_atomic(d / "statuses.json", statuses)
    write_json_atomic(done, passed)
    return passed


# --- selection and training -------------------------------------------------------------------


def select(plan: Plan, r: int, answers: dict[str, list[str]], passed: dict[str, list[bool]]) -> list[dict]:
    """(instruction, passing code) rows: duplicates removed, at most keep_per_task per task, the
    shortest (or the most diverse) first. The code is trained as a fenced block, as in the dataset."""
    rows = []
    for task in plan.tasks:
        codes = []
        for answer, ok in zip(answers.get(task.task_id, []), passed.get(task.task_id, [])):
            code = extract_code(answer).strip("\n")
            if ok and code and code not in codes:
                codes.append(code)
        for code in pick(codes, plan.cfg.keep_per_task, plan.cfg.select):
            rows.append({"instruction": task.instruction, "input": "", "output": f"```python\n{code}\n```",
                         "task_id": task.task_id})
    return rows


def pick(codes: list[str], m: int, how: str) -> list[str]:
    """At most `m` of `codes`: the shortest first, or (diverse) the shortest, then each time the
    one least similar (difflib ratio) to those already kept."""
    ordered = sorted(codes, key=lambda c: (len(c), c))
    if how == "shortest" or len(ordered) <= 1:
        return ordered[:m]
    kept = [ordered.pop(0)]
    while ordered and len(kept) < m:
        best = min(ordered, key=lambda c: (max(difflib.SequenceMatcher(None, c, k).ratio() for k in kept), len(c)))
        ordered.remove(best)
        kept.append(best)
    return kept


def _original_splits(plan: Plan) -> dict[str, list[dict]]:
    """The train and validation rows of the start's data, split exactly as its run split them."""
    data_cfg = parse_config(_round_config(plan, 1, None, plan.out / "check", original=True)).data
    cur = instruction_data(data_cfg, int(plan.run_cfg.get("seed", 42)))
    return {s: [cur.rows[i] for i in cur.splits[s]] for s in ("train", "validation")}


def _round_config(plan: Plan, r: int, adapter: str | None, out: Path, original: bool = False) -> dict:
    """The run config of round r's training (original=True: the start's own, for its data)."""
    data = copy.deepcopy(plan.run_cfg)
    if original:
        return data
    data["out"] = str(out)
    data.setdefault("eval", {})
    data["eval"] = {**(data["eval"] or {}), "tasks": None}
    data["seed"] = plan.cfg.seed + r
    for key, value in plan.cfg.set.items():
        set_dotted(data, key, value)
    set_dotted(data, "data.source", str(plan.round_dir(r) / "data"))
    set_dotted(data, "data.fallback", None)
    set_dotted(data, "data.limit", None)
    set_dotted(data, "lora.init_from", adapter)
    return data


def fine_tune(plan: Plan, r: int, adapter: str | None, pairs: list[dict]) -> str | None:
    """Train round r's adapter on the passing answers plus original rows; returns its directory.
    With no passing answer the model stays as it is."""
    d = plan.round_dir(r)
    target = d / "adapter"
    if RunDir(target).is_complete():
        return str(target)
    if not pairs:
        say(f"round {r}: no answer passed its tests; nothing to train on, the model stays as it was")
        write_json_atomic(d / TRAINING, {"pairs": 0, "original_rows": 0, "trained": False})
        return adapter
    data_dir = d / "data"
    if not RunDir(data_dir).is_complete():
        _write_round_data(plan, r, pairs, data_dir)
    cfg = parse_config(_round_config(plan, r, adapter, target))
    resume = has_checkpoint(partial_dir(target))
    say(f"round {r}: training on {RunDir(data_dir).read_manifest()['splits']['train']['rows']} "
        f"rows{' (resuming)' if resume else ''} ...")
    run(cfg, RunOptions(evaluate=False, overwrite=True, resume=resume))
    return str(target)


def _write_round_data(plan: Plan, r: int, pairs: list[dict], data_dir: Path) -> None:
    """A prepared dataset (the format of `codelora data prepare`): train = passing answers + a share
    of the original train rows; validation = the original validation rows (unchanged every round)."""
    cfg = plan.cfg
    original = _original_splits(plan)
    share = cfg.original_share
    n_orig = min(len(original["train"]), round(len(pairs) * share / (1 - share)))
    mix = random.Random(cfg.seed * 7919 + r).sample(original["train"], n_orig)
    train = [{k: p[k] for k in ("instruction", "input", "output")} for p in pairs] + \
            [{k: row[k] for k in ("instruction", "input", "output")} for row in mix]
    random.Random(cfg.seed * 7919 + r).shuffle(train)
    validation = [{k: row[k] for k in ("instruction", "input", "output")} for row in original["validation"]]
    splits = {"train": train, "validation": validation, "test": []}
    with staged_run_dir(data_dir, overwrite=True) as tmp:  # an earlier attempt cut off before its manifest: redone
        for split, rows in splits.items():
            write_text_atomic(tmp / f"{split}.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
        write_json_atomic(tmp / "pairs.json", pairs)
        write_json_atomic(tmp / MANIFEST, {
            "source": f"codelora improve round {r}", "pairs": len(pairs), "original_rows": n_orig,
            "tasks_with_pairs": len({p["task_id"] for p in pairs}),
            "splits": {s: {"rows": len(v)} for s, v in splits.items()}})


# --- evaluation and report --------------------------------------------------------------------


def evaluate_round(plan: Plan, r: int, adapter: str | None) -> None:
    """Greedy pass@1 of round r's model on each held-out suite (round 0: the base and the start)."""
    cfg = plan.cfg
    ec = cfg.eval
    gen = GenerateConfig(max_new_tokens=cfg.generate.max_new_tokens)  # greedy
    model_cfg = _model_cfg(plan)
    for name, tasks in plan.heldout.items():
        out = plan.round_dir(r) / "eval" / name
        if (out / EXEC_REPORT).is_file():
            continue
        if r > 0 and adapter == _previous_adapter(plan, r):  # not trained this round: same scores
            continue
        adapters = [adapter] if adapter else []
        say(f"{_name(r)}: evaluating on {name} ({len(tasks)} tasks) ...")
        evaluate_models(tasks, model_cfg, adapters, out, ec, gen, cfg.device,
                        adapter_names=["start" if r == 0 else f"round-{r}"], include_base=(r == 0))


def _previous_adapter(plan: Plan, r: int) -> str | None:
    for q in range(r - 1, 0, -1):
        if RunDir(plan.round_dir(q) / "adapter").is_complete():
            return str(plan.round_dir(q) / "adapter")
    return plan.start_adapter


def _sampled(plan: Plan, r: int | str) -> dict | None:
    """pass@1 (at temperature T) and pass@k on the training tasks from round r's samples."""
    path = plan.round_dir(r) / "exec" / PASSED
    if not path.is_file():
        return None
    passed = json.loads(path.read_text())
    k = plan.cfg.samples
    n = len(passed)
    return {"tasks": n, "pass@1": sum(pass_at_k(len(v), sum(v), 1) for v in passed.values()) / n,
            f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in passed.values()) / n,
            "tasks_solved": sum(any(v) for v in passed.values()), "answers_passed": sum(sum(v) for v in passed.values())}


def write_report(plan: Plan) -> dict:
    rows = []
    for r in range(0, plan.cfg.rounds + 1):
        d = plan.round_dir(r)
        models = ["base", "start"] if r == 0 else [f"round-{r}"]
        if r == 0 and not plan.start_adapter:
            models = ["base"]
        for name in models:
            entry = {"round": r, "model": name, "heldout": {}}
            for suite in plan.heldout:
                report = d / "eval" / suite / EXEC_REPORT
                if report.is_file():
                    m = json.loads(report.read_text())["models"].get(name)
                    if m:
                        entry["heldout"][suite] = {"pass@1": m["pass@1"], "ci95": m["pass@1_ci95"],
                                                   "tasks": m["tasks"], "passed": m["status"]["passed"]}
            if name != "base" or not plan.start_adapter:
                # the answers sampled at the start of the next round (or the final sampling) measure this model
                entry["train_tasks_sampled"] = _sampled(plan, r + 1 if r < plan.cfg.rounds else "final")
            if r > 0:
                entry |= _training_facts(plan, r)
            rows.append(entry)
    report = {"config": asdict(plan.cfg), "start": plan.start_adapter,
              "train_tasks": len(plan.tasks), "heldout": {k: len(v) for k, v in plan.heldout.items()}, "rows": rows}
    write_json_atomic(plan.out / REPORT, report)
    write_text_atomic(plan.out / REPORT_MD, render_markdown(report))
    plot_rounds(report, plan.out / "pass_at_1.png")
    return report


def _training_facts(plan: Plan, r: int) -> dict:
    d = plan.round_dir(r)
    facts: dict = {}
    for what in ("samples", "exec"):
        facts |= {f"{k}_seconds": v for k, v in stage_seconds(d / what).items()}
    data = RunDir(d / "data")
    if data.is_complete():
        m = data.read_manifest()
        facts |= {"pairs": m["pairs"], "tasks_with_pairs": m["tasks_with_pairs"], "original_rows": m["original_rows"]}
    adapter = RunDir(d / "adapter")
    if adapter.is_complete():
        t = adapter.read_manifest()["train"]
        facts |= {"train_seconds": t["seconds"], "train_steps": t["steps"], "train_tokens_per_s": t["tokens_per_s"]}
    elif (d / TRAINING).is_file():
        facts |= json.loads((d / TRAINING).read_text())
    return facts


def load_improve_config(path: str, assignments: list[tuple[str, object]] = ()) -> ImproveConfig:
    data = load_config_file(path)
    for key, value in assignments:
        set_improve_field(data, key, value)
    return parse_improve_config(data)

