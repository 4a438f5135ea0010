import csv
import json

import pytest

from codelora.data.load import load_rows
from codelora.errors import DataError
from conftest import write_jsonl

COLS = ("instruction", "input", "output")


def _strip(rows):
    return [{c: r[c] for c in COLS} for r in rows]


def test_all_local_formats_read_the_same_rows(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {"jsonl": write_jsonl(tmp_path / "a.jsonl", rows)}
    files["json"] = tmp_path / "a.json"
    files["json"].write_text(json.dumps(rows))
    files["csv"] = tmp_path / "a.csv"
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    files["parquet"] = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    for kind, path in files.items():
        loaded = load_rows(str(path))
        assert loaded.rows == _strip(rows), kind
        assert loaded.kind == "local" and loaded.total_rows == len(rows)
    hashes = {load_rows(str(p)).sha256 for p in files.values()}
    assert len(hashes) == 1


def test_limit_takes_the_first_rows(data_file, rows):
    loaded = load_rows(str(data_file), limit=7)
    assert loaded.rows == _strip(rows[:7])
    assert loaded.sha256 != load_rows(str(data_file)).sha256


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_rows(str(tmp_path / "missing.jsonl"))


def test_missing_columns_are_named(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "text": "b"}])
    with pytest.raises(DataError) as e:
        load_rows(str(path))
    assert "missing required column(s) input, output" in str(e.value)


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": oops}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: malformed JSON line"):
        load_rows(str(path))


def test_unusable_rows_are_dropped_and_counted(tmp_path, rows, capsys):
    bad = rows[:5] + [{"instruction": "q", "input": "", "output": "  "},
                      {"instruction": "", "input": "", "output": "x"},
                      {"instruction": "q", "input": None, "output": 3}]
    loaded = load_rows(str(write_jsonl(tmp_path / "x.jsonl", bad)))
    assert len(loaded.rows) == 5
    assert loaded.dropped == {"empty output": [5], "empty instruction": [6], "non-text value": [7]}
    assert "dropped rows" in capsys.readouterr().err


def test_null_input_means_no_input(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "q", "input": None, "output": "a"}] * 3)
    assert load_rows(str(path)).rows[0]["input"] == ""


def test_unreachable_hub_says_so_and_shows_a_local_file():
    # conftest sets HF_HUB_OFFLINE=1, which makes the Hub unreachable at once.
    with pytest.raises(DataError) as e:
        load_rows("flytech/python-codes-25k")
    msg = str(e.value)
    assert "Hub is unreachable" in msg and "--data path/to/file.jsonl" in msg
    assert "\n" not in msg


def test_unreachable_hub_uses_the_fallback(data_file, rows, capsys):
    loaded = load_rows("flytech/python-codes-25k", fallback=str(data_file))
    assert loaded.rows == _strip(rows) and loaded.source == str(data_file)
    assert "using the local fallback" in capsys.readouterr().err


def test_real_head_of_the_dataset(shared_head):
    loaded = load_rows(str(shared_head))
    assert len(loaded.rows) == 356 and not loaded.dropped
    assert loaded.rows[0]["instruction"] == "Help me set up my daily to-do list!"


def test_unreachable_hub_with_a_missing_fallback(tmp_path):
    with pytest.raises(DataError, match="fallback file .* does not exist"):
        load_rows("flytech/python-codes-25k", fallback=str(tmp_path / "gone.jsonl"))
