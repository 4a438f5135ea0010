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
import time
from dataclasses import dataclass, field
from pathlib import Path

from codelora.config import EvalConfig, GenerateConfig, ImproveConfig, load_config_file, parse_config, set_dotted
from codelora.console import say
from codelora.data.clean import extract_code
from codelora.errors import CodeloraError, ConfigError
from codelora.evaluation.exec_eval import evaluate_models, load_suite, require_execution_flag
from codelora.evaluation.execution import Task, execute, load_tasks_file, pass_at_k
from codelora.evaluation.sandbox import Limits
from codelora.io.files import write_json_atomic, write_text_atomic
from codelora.io.rundir import has_checkpoint, partial_dir
from codelora.models.generate import generate_answers

CONFIG_NAME = "improve.yaml"


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
        if not (start / "config.yaml").is_file() or not (start / "adapter_config.json").is_file():
            raise ConfigError(f"improve.start: {start} is not a LoRA run directory of codelora (config.yaml and "
                              f"adapter_config.json are needed)")
        run_cfg = load_config_file(start / "config.yaml")
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
    chunk = max(1, cfg.batch_size * 2 // cfg.samples)  # about two batches of sequences per chunk
    plan = Plan(cfg, out, run_cfg, str(start) if start else None, tasks, heldout,
                [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)])
    parse_config(_round_config(plan, 1, plan.start_adapter, out / "check"))  # a bad `set` fails now
    _claim(out, cfg, overwrite)
    say(f"improve: {len(tasks)} training tasks from {len(files)} file(s), held-out {', '.join(heldout)}, "
        f"{cfg.rounds} round(s) from {start or 'the base model ' + str((run_cfg.get('model') or {}).get('name'))}")
    return plan


def _claim(out: Path, cfg: ImproveConfig, overwrite: bool) -> None:
    """A new improve directory, or the same config continued; another config needs --overwrite."""
    import dataclasses
    import shutil

    import yaml

    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    existing = out / CONFIG_NAME
    if existing.is_file() and existing.read_text(encoding="utf-8") != text:
        if not overwrite:
            raise CodeloraError(f"{out} holds an improve run with other settings; pass --overwrite to start over "
                                f"or choose another out")
        shutil.rmtree(out)
    elif out.exists() and not existing.is_file() and any(out.iterdir()):
        if not overwrite:
            raise CodeloraError(f"output directory {out} already exists and is not empty; pass --overwrite or "
                                f"choose another out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not existing.is_file():
        write_text_atomic(existing, text)
    elif existing.is_file():
        say(f"improve: continuing {out}")


def _model_cfg(plan: Plan):
    return parse_config(_round_config(plan, 1, plan.start_adapter, plan.out / "check")).model


# --- sampling and execution -------------------------------------------------------------------


def _load(plan: Plan, adapter: str | None, precision: str):
    from codelora.data.prompts import PromptFormat
    from codelora.models.lora import load_adapter
    from codelora.models.precision import precision_for
    from codelora.models.sources import load_base, pick_device

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
    d.mkdir(parents=True, exist_ok=True)
    cfg, k = plan.cfg, plan.cfg.samples
    gen = GenerateConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    todo = [i for i in range(len(plan.chunks)) if not (d / f"chunk-{i:04d}.json").is_file()]
    if todo:
        model, fmt, device = _load(plan, adapter, cfg.sample_precision)
        for n, i in enumerate(todo, 1):
            t0 = time.perf_counter()
            questions = [t.instruction for t in plan.chunks[i] for _ in range(k)]
            answers = generate_answers(model, fmt, questions, gen, cfg.batch_size, device, seed=_seed(plan, r, i),
                                       progress_desc=f"{_name(r)}: sampling chunk {n}/{len(todo)}")
            write_json_atomic(d / f"chunk-{i:04d}.json",
                              {t.task_id: answers[j * k:(j + 1) * k] for j, t in enumerate(plan.chunks[i])})
            _add_seconds(d, "sampling", time.perf_counter() - t0)  # per chunk: a killed attempt's chunks count
        del model
    out = {}
    for i in range(len(plan.chunks)):
        out |= json.loads((d / f"chunk-{i:04d}.json").read_text(encoding="utf-8"))
    write_json_atomic(done, out)
    return out


def _seed(plan: Plan, r: int | str, chunk: int) -> int:
    r_index = plan.cfg.rounds + 1 if r == "final" else r
    return plan.cfg.seed * 1_000_003 + r_index * 10_007 + chunk * 101


def _name(r: int | str) -> str:
    return r if isinstance(r, str) else f"round {r}"


def _add_seconds(d: Path, what: str, seconds: float) -> None:
    """Time spent in a stage, summed chunk by chunk over interrupted attempts (model loading not counted)."""
    path = d / "seconds.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[what] = round(times.get(what, 0.0) + seconds, 1)
    write_json_atomic(path, times)


def run_answers(plan: Plan, r: int | str, answers: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Each answer in the sandbox; task_id -> passed per answer."""
    d = plan.round_dir(r) / "exec"
    done = d / "passed.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    d.mkdir(parents=True, exist_ok=True)
    limits = Limits(timeout_s=plan.cfg.timeout)
    todo = [i for i in range(len(plan.chunks)) if not (d / f"chunk-{i:04d}.json").is_file()]
    for n, i in enumerate(todo, 1):
        t0 = time.perf_counter()
        results = execute(plan.chunks[i], answers, limits, from_chat=True,
                          desc=f"{_name(r)}: running chunk {n}/{len(todo)}")
        write_json_atomic(d / f"chunk-{i:04d}.json", {res.task_id: [o.status for o in res.outcomes] for res in results})
        _add_seconds(d, "execution", time.perf_counter() - t0)
    statuses = {}
    for i in range(len(plan.chunks)):
        statuses |= json.loads((d / f"chunk-{i:04d}.json").read_text(encoding="utf-8"))
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
    from codelora.data.pipeline import instruction_data

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
    from codelora.experiments.run import RunOptions, run

    d = plan.round_dir(r)
    target = d / "adapter"
    if (target / "manifest.json").is_file():
        return str(target)
    if not pairs:
        say(f"round {r}: no answer passed its tests; nothing to train on, the model stays as it was")
        write_json_atomic(d / "training.json", {"pairs": 0, "original_rows": 0, "trained": False})
        return adapter
    data_dir = d / "data"
    if not (data_dir / "manifest.json").is_file():
        _write_round_data(plan, r, pairs, data_dir)
    cfg = parse_config(_round_config(plan, r, adapter, target))
    resume = has_checkpoint(partial_dir(target))
    say(f"round {r}: training on {json.loads((data_dir / 'manifest.json').read_text())['splits']['train']['rows']} "
        f"rows{' (resuming)' if resume else ''} ...")
    run(cfg, RunOptions(evaluate=False, overwrite=True, resume=resume))
    return str(target)


def _write_round_data(plan: Plan, r: int, pairs: list[dict], data_dir: Path) -> None:
    """A prepared dataset (the format of `codelora data prepare`): train = passing answers + a share
    of the original train rows; validation = the original validation rows (unchanged every round)."""
    import shutil

    cfg = plan.cfg
    original = _original_splits(plan)
    share = cfg.original_share
    n_orig = min(len(original["train"]), round(len(pairs) * share / (1 - share)))
    mix = random.Random(cfg.seed * 7919 + r).sample(original["train"], n_orig)
    train = [{k: p[k] for k in ("instruction", "input", "output")} for p in pairs] + \
            [{k: row[k] for k in ("instruction", "input", "output")} for row in mix]
    random.Random(cfg.seed * 7919 + r).shuffle(train)
    validation = [{k: row[k] for k in ("instruction", "input", "output")} for row in original["validation"]]
    tmp = data_dir.with_name(data_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = {"train": train, "validation": validation, "test": []}
    for split, rows in splits.items():
        write_text_atomic(tmp / f"{split}.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    write_json_atomic(tmp / "pairs.json", pairs)
    write_json_atomic(tmp / "manifest.json", {
        "source": f"codelora improve round {r}", "pairs": len(pairs), "original_rows": n_orig,
        "tasks_with_pairs": len({p["task_id"] for p in pairs}),
        "splits": {s: {"rows": len(v)} for s, v in splits.items()}})
    shutil.rmtree(data_dir, ignore_errors=True)
    tmp.rename(data_dir)


# --- evaluation and report --------------------------------------------------------------------


def evaluate_round(plan: Plan, r: int, adapter: str | None) -> None:
    """Greedy pass@1 of round r's model on each held-out suite (round 0: the base and the start)."""
    cfg = plan.cfg
    ec = EvalConfig(batch_size=cfg.batch_size, timeout=cfg.timeout, precision=cfg.eval_precision,
                    allow_code_execution=True)
    gen = GenerateConfig(max_new_tokens=cfg.max_new_tokens)
    model_cfg = _model_cfg(plan)
    for name, tasks in plan.heldout.items():
        out = plan.round_dir(r) / "eval" / name
        if (out / "exec_report.json").is_file():
            continue
        if r > 0 and adapter == _previous_adapter(plan, r):  # not trained this round: same scores
            continue
        adapters = [adapter] if adapter else []
        say(f"{_name(r)}: evaluating on {name} ({len(tasks)} tasks) ...")
        evaluate_models(tasks, model_cfg, adapters, out, ec, gen, cfg.device,
                        adapter_names=["start" if r == 0 else f"round-{r}"], include_base=(r == 0))


def _previous_adapter(plan: Plan, r: int) -> str | None:
    for q in range(r - 1, 0, -1):
        if (plan.round_dir(q) / "adapter" / "manifest.json").is_file():
            return str(plan.round_dir(q) / "adapter")
    return plan.start_adapter


def _sampled(plan: Plan, r: int | str) -> dict | None:
    """pass@1 (at temperature T) and pass@k on the training tasks from round r's samples."""
    path = plan.round_dir(r) / "exec" / "passed.json"
    if not path.is_file():
        return None
    passed = json.loads(path.read_text())
    k = plan.cfg.samples
    n = len(passed)
    return {"tasks": n, "pass@1": sum(pass_at_k(len(v), sum(v), 1) for v in passed.values()) / n,
            f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in passed.values()) / n,
            "tasks_solved": sum(any(v) for v in passed.values()), "answers_passed": sum(sum(v) for v in passed.values())}


def write_report(plan: Plan) -> dict:
    from codelora.experiments.improve_report import plot_rounds, render_markdown

    rows = []
    for r in range(0, plan.cfg.rounds + 1):
        d = plan.round_dir(r)
        models = ["base", "start"] if r == 0 else [f"round-{r}"]
        if r == 0 and not plan.start_adapter:
            models = ["base"]
        for name in models:
            entry = {"round": r, "model": name, "heldout": {}}
            for suite in plan.heldout:
                report = d / "eval" / suite / "exec_report.json"
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
    report = {"config": dict(vars(plan.cfg)), "start": plan.start_adapter,
              "train_tasks": len(plan.tasks), "heldout": {k: len(v) for k, v in plan.heldout.items()}, "rows": rows}
    write_json_atomic(plan.out / "report.json", report)
    write_text_atomic(plan.out / "report.md", render_markdown(report))
    plot_rounds(report, plan.out / "pass_at_1.png")
    return report


def _training_facts(plan: Plan, r: int) -> dict:
    d = plan.round_dir(r)
    facts: dict = {}
    for what in ("samples", "exec"):
        path = d / what / "seconds.json"
        if path.is_file():
            facts |= {f"{k}_seconds": v for k, v in json.loads(path.read_text()).items()}
    data = d / "data" / "manifest.json"
    if data.is_file():
        m = json.loads(data.read_text())
        facts |= {"pairs": m["pairs"], "tasks_with_pairs": m["tasks_with_pairs"], "original_rows": m["original_rows"]}
    manifest = d / "adapter" / "manifest.json"
    if manifest.is_file():
        t = json.loads(manifest.read_text())["train"]
        facts |= {"train_seconds": t["seconds"], "train_steps": t["steps"], "train_tokens_per_s": t["tokens_per_s"]}
    elif (d / "training.json").is_file():
        facts |= json.loads((d / "training.json").read_text())
    return facts


def load_improve_config(path: str, assignments: list[tuple[str, object]] = ()) -> ImproveConfig:
    from codelora.config import parse_improve_config

    data = load_config_file(path)
    for key, value in assignments:
        if key.startswith("set."):
            data.setdefault("set", {})
            data["set"] = {**(data["set"] or {}), key[4:]: value}
        elif "." in key:
            raise ConfigError(f"--set {key}: improve fields are top-level (rounds, samples, ...); for the training "
                              f"config use --set set.{key}=...")
        else:
            data[key] = value
    return parse_improve_config(data)

