"""A call of `train(cfg)` goes through the data path top to bottom: each data module is entered once
per stage, not back and forth.

The trace follows which codelora module is running (the innermost codelora frame, at every call and
return); a visit is a change to a different module. A loop that calls into other modules once per
row (A > B > A > B > ... > A, or A > B > C > B > A > B > C > ...) counts as one round trip
(A > B > A, A > B > C > B > A), so the counts describe the path, not the number of rows. `pytest -s tests/data/test_call_trace.py` prints the counts.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from conftest import make_rows, write_jsonl

MAX_LOOP = 6  # the longest cycle of modules (A > B > C > B > A ...) counted as one loop


def module_visits(fn) -> list[tuple[str, bool]]:
    """(module, entered) for each module that runs during fn(), in order, per-row loops collapsed (see
    above); entered: by a call (else by a return to it)."""
    visits: list[tuple[str, bool]] = []

    def running(frame):
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith("codelora."):
                return name[len("codelora."):]
            frame = frame.f_back
        return None

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        module = running(frame if event == "call" else frame.f_back)
        if module and (not visits or visits[-1][0] != module):
            visits.append((module, event == "call"))
            for period in range(2, MAX_LOOP + 1):  # a loop over rows: its cycle of visits counts once
                if visits[-period:] == visits[-2 * period:-period]:
                    del visits[-period:]
                    break

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return visits


def data_entries(visits: list[tuple[str, bool]]) -> Counter:
    """How often each data module is entered (called from another module)."""
    return Counter(m for m, entered in visits if entered and m.startswith("data."))


def trace_train(model_dir, data_file, out, task: str, targets: list[str] | None = None) -> list[tuple[str, bool]]:
    from codelora.config_parse import parse_config
    from codelora.io.rundir import staged_run_dir
    from codelora.training.train import train

    cfg = parse_config({"out": str(out), "seed": 1, "model": {"name": str(model_dir), "task": task},
                        "data": {"source": str(data_file)},
                        "lora": {"r": 4, "alpha": 8, **({"target_modules": targets} if targets else {})},
                        "train": {"max_steps": 1, "batch_size": 8}})
    with staged_run_dir(out.with_name(out.name + "-untraced")) as d:
        train(cfg, d)  # once untraced: what train imports on first use is imported (a profiled import is slow)
    with staged_run_dir(out) as d:
        return module_visits(lambda: train(cfg, d))


def summary(task: str, visits: list[tuple[str, bool]]) -> str:
    data = Counter(m for m, _ in visits if m.startswith("data."))
    entries = data_entries(visits)
    return (f"{task}: {len(visits)} module visits, {sum(data.values())} in data/ ("
            + ", ".join(f"{m[5:]} {n}" for m, n in sorted(data.items()))
            + f"); data modules entered {sum(entries.values())} times ("
            + ", ".join(f"{m[5:]} {n}" for m, n in sorted(entries.items())) + ")")


# Each data module entered from another module, in order, with the stage it serves: once per stage.
INSTRUCTION_ROWS = [  # causal-lm (seq2seq takes the same path: data.pipeline.PIPELINES)
    ("set_up: the rows, before the model", "pipeline"),
    ("read", "load"),
    ("validate", "validate"), ("validate", "load"),  # load.has_surrogates: what a readable string is
    ("clean", "clean"),
    ("group related rows", "dedup"), ("group related rows", "clean"),  # normalised text has no fences
    ("split", "split"),
    ("audit the split", "dedup"), ("audit the split", "clean"),
]
LABELED_ROWS = [
    ("set_up: the rows, before the model", "pipeline"),
    ("read", "load"),
    ("validate and label", "labels"), ("validate and label", "validate"), ("validate and label", "load"),
    ("validate and label", "categories"),
    ("check the share dropped", "validate"),
    ("split", "labels"), ("split", "split"),
    ("set_up: the class names, for the model's head", "labels"),
]
ENCODE_AND_TRAIN = [
    ("set_up: the task's format", "prompts"),
    ("set_up: encode", "pipeline"), ("encode", "prompts"),
    ("set_up: say the split sizes", "pipeline"),
    ("train: the training and validation examples", "pipeline"),
]
EXPECTED = {
    "causal-lm": INSTRUCTION_ROWS + ENCODE_AND_TRAIN + [("loop: supervised tokens", "prompts"),
                                                          ("save_result: the manifest", "pipeline")],
    "classification": LABELED_ROWS + ENCODE_AND_TRAIN + [("loop: data fingerprint", "prompts"),
                                                         ("loop: supervised tokens", "prompts"),
                                                         ("save_result: the manifest", "pipeline")],
}
MODELS = {"causal-lm": ("tiny_model_dir", None), "classification": ("tiny_bert_dir", ["query", "value"])}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_train_enters_each_data_module_once_per_stage(task, request, tmp_path):
    fixture, targets = MODELS[task]
    data = write_jsonl(tmp_path / "rows.jsonl", make_rows(40))
    visits = trace_train(request.getfixturevalue(fixture), data, tmp_path / "run", task, targets)
    print(summary(task, visits))
    entries = [m[len("data."):] for m, entered in visits if entered and m.startswith("data.")]
    assert entries == [m for _, m in EXPECTED[task]], summary(task, visits) + "\n" + " > ".join(m for m, _ in visits)
