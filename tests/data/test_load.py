import csv
import json

import pytest

from codelora.config import DataConfig
from codelora.data.pipeline import load_data
from codelora.errors import DataError
from conftest import write_jsonl

COLS = ("instruction", "input", "output")


def _strip(rows):
    return [{c: r[c] for c in COLS} for r in rows]


def _load(source, **kw):
    return load_data(DataConfig(source=str(source), **kw))


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
        loaded = _load(path)
        assert _strip(loaded.rows) == _strip(rows), kind
        assert loaded.kind == "local" and loaded.total == len(rows) and not loaded.drops
        assert [r["ref"] for r in loaded.rows] == list(range(1, len(rows) + 1))
        assert all(r["text"] == o["text"] for r, o in zip(loaded.rows, rows))


def test_limit_takes_the_first_rows(data_file, rows):
    loaded = _load(data_file, limit=7)
    assert _strip(loaded.rows) == _strip(rows[:7]) and loaded.total == 7


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        _load(tmp_path / "missing.jsonl")


def test_missing_columns_are_named(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "text": "b"}])
    with pytest.raises(DataError) as e:
        _load(path)
    assert "missing required column(s) input, output" in str(e.value)


def test_unreachable_hub_says_so_and_shows_a_local_file():
    # conftest sets HF_HUB_OFFLINE=1, which makes the Hub unreachable at once.
    with pytest.raises(DataError) as e:
        _load("flytech/python-codes-25k")
    msg = str(e.value)
    assert "Hub is unreachable" in msg and "--data path/to/file.jsonl" in msg
    assert "\n" not in msg


def test_unreachable_hub_uses_the_fallback(data_file, rows, capsys):
    loaded = load_data(DataConfig(source="flytech/python-codes-25k", fallback=str(data_file)))
    assert _strip(loaded.rows) == _strip(rows) and loaded.source == str(data_file)
    assert "using the local fallback" in capsys.readouterr().err


def test_unreachable_hub_with_a_missing_fallback(tmp_path):
    with pytest.raises(DataError, match="fallback file .* does not exist"):
        load_data(DataConfig(source="flytech/python-codes-25k", fallback=str(tmp_path / "gone.jsonl")))


def test_real_head_of_the_dataset(shared_head):
    loaded = _load(shared_head)
    assert len(loaded.rows) == 356 and not loaded.drops
    assert loaded.rows[0]["instruction"] == "Help me set up my daily to-do list!"


def test_a_line_nested_too_deep_is_one_dropped_line(tmp_path, rows):
    path = write_jsonl(tmp_path / "deep.jsonl", rows[:3])
    with open(path, "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")  # json.loads raises RecursionError on this
    src = _load(path, max_drop_fraction=0.5)
    assert _strip(src.rows) == _strip(rows[:3])
    assert src.drops["malformed JSON"] == [4]


def test_a_broken_parquet_or_csv_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"cannot read .*bad.parquet as Parquet"):
        _load(bad)
    huge = tmp_path / "huge.csv"  # a field over the csv module's size limit stops its reader
    huge.write_text("instruction,input,output\n" + "a,b,c\n" * 3 + 'x,"' + "y" * 200_000 + '",z\n')
    with pytest.raises(DataError, match=r"huge.csv: malformed CSV near line 5 \(field larger than field limit"):
        _load(huge)


def test_a_bug_in_a_reader_is_not_reported_as_an_unreadable_file(tmp_path, rows, monkeypatch):
    import codelora.data.load as load

    def broken(path):
        raise KeyError("a bug")

    monkeypatch.setattr(load, "_read_jsonl", broken)
    with pytest.raises(KeyError):
        _load(write_jsonl(tmp_path / "a.jsonl", rows))
