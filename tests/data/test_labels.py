"""Classification rows: labeled files, the built-in category task, and the leakage-free split."""

import csv
import json

import pytest

from codelora.config import DataConfig
from codelora.data.labels import category_label, label_names, split_labeled
from codelora.data.load import read_source
from codelora.data.pipeline import load_labeled
from codelora.data.split import SPLITS
from codelora.errors import DataError
from conftest import write_jsonl

CATS = {"file io": ["file", "read"], "algorithm": ["sort", "binary search"], "web": ["url"]}


def _cfg(path, **kw):
    return DataConfig(source=str(path), **kw)


def _labeled_jsonl(tmp_path):
    lines = [
        json.dumps({"text": " good one ", "label": "spam"}),     # 1
        json.dumps({"text": "good two", "label": 3}),            # 2: an integer label
        json.dumps({"text": "no label here"}),                   # 3
        json.dumps({"text": "   ", "label": "spam"}),            # 4
        json.dumps({"text": "list label", "label": ["spam"]}),   # 5
        '{"text": "broken", "label": ',                          # 6
        json.dumps({"label": "ham"}),                            # 7
        json.dumps({"text": "bool label", "label": True}),       # 8
        json.dumps({"text": "x" * 41, "label": "ham"}),          # 9: over max_chars=40
        json.dumps({"text": "good three", "label": " ham "}),    # 10
    ]
    path = tmp_path / "labeled.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_labeled_jsonl_rows_and_drop_reasons(tmp_path):
    got = load_labeled(_cfg(_labeled_jsonl(tmp_path), max_chars=40, max_drop_fraction=1.0))
    assert not got.builtin
    assert got.rows.rows == [{"text": "good one", "label": "spam", "ref": 1},
                             {"text": "good two", "label": "3", "ref": 2},
                             {"text": "good three", "label": "ham", "ref": 10}]
    assert got.rows.drops == {"malformed JSON": [6], "missing label": [3], "empty text": [4],
                              "label not a string or integer": [5, 8], "missing text": [7],
                              "over length limit": [9]}
    assert got.rows.total == 10 and got.rows.ref_kind == "line"
    assert label_names(got.rows.rows) == ["3", "ham", "spam"]


def test_labeled_csv(tmp_path):
    path = tmp_path / "labeled.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "note"])
        w.writerows([["first text", "pos", "a"], ["second text", "neg", ""], ["third text", "", "b"],
                     ["fourth, with a comma", "1", ""]])
    got = load_labeled(_cfg(path, max_drop_fraction=0.5))
    assert [(r["text"], r["label"], r["ref"]) for r in got.rows.rows] == [
        ("first text", "pos", 1), ("second text", "neg", 2), ("fourth, with a comma", "1", 4)]
    assert got.rows.drops == {"missing label": [3]}  # an empty cell is no label
    assert label_names(got.rows.rows) == ["1", "neg", "pos"]


def test_category_label_takes_the_first_match_in_config_order():
    assert category_label("Read a file and sort it", CATS) == "file io"
    reordered = {"algorithm": CATS["algorithm"], "file io": CATS["file io"], "web": CATS["web"]}
    assert category_label("Read a file and sort it", reordered) == "algorithm"
    assert category_label("Implement a Binary  search", CATS) == "other"  # phrase keys match as written
    assert category_label("Implement a binary search", CATS) == "algorithm"
    assert category_label("Say hello", CATS) == "other"
    assert category_label("Sorting things", CATS) == "other"  # whole words only


def test_builtin_category_task(tmp_path):
    rows = [
        {"instruction": "  Read a file and sort it ", "input": "", "output": "x = 1"},
        {"instruction": "Fetch this URL", "input": "http://a", "output": "y = 2"},
        {"instruction": "Say hello", "input": None, "output": "print('hi')"},
        {"instruction": "Sort a list", "input": "", "output": "   "},  # empty output: dropped
        {"instruction": "Implement a binary search", "input": "", "output": "z = 3"},
    ]
    got = load_labeled(_cfg(write_jsonl(tmp_path / "code.jsonl", rows), categories=CATS, max_drop_fraction=0.5))
    assert got.builtin
    assert got.rows.rows == [{"text": "Read a file and sort it", "label": "file io", "ref": 1},
                             {"text": "Fetch this URL", "label": "web", "ref": 2},
                             {"text": "Say hello", "label": "other", "ref": 3},
                             {"text": "Implement a binary search", "label": "algorithm", "ref": 5}]
    assert got.rows.drops == {"empty output": [4]}


@pytest.mark.parametrize("record", [{"foo": 1, "bar": "x"}, {"text": "only text, no label"}])
def test_neither_shape_names_both(tmp_path, record):
    path = write_jsonl(tmp_path / "odd.jsonl", [record, record])
    with pytest.raises(DataError) as e:
        load_labeled(_cfg(path))
    msg = str(e.value)
    assert str(path) in msg and "text and label" in msg and "instruction/input/output" in msg
    assert "\n" not in msg


def test_read_source_checks_the_columns_it_is_given(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match=r"missing required column\(s\) label; expected columns text, label$"):
        read_source(str(path), required=("text", "label"))
    assert read_source(str(path), required=()).records == [{"text": "a"}]
    with pytest.raises(DataError, match=r"expected columns instruction, input, output \(text is optional\)"):
        read_source(str(path))  # the default check is unchanged


def test_drop_fraction_over_the_limit_raises(tmp_path):
    rows = [{"text": f"text {i}", "label": "a"} for i in range(9)] + [{"text": "", "label": "a"}]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    with pytest.raises(DataError, match=r"1 of 10 rows failed validation \(1 empty text\).*max_drop_fraction=0.05"):
        load_labeled(_cfg(path))
    assert len(load_labeled(_cfg(path, max_drop_fraction=0.1)).rows.rows) == 9


def test_no_usable_rows(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "", "label": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=r"l\.jsonl: no usable rows$"):
        load_labeled(_cfg(path, max_drop_fraction=1.0))


def _split_rows():
    rows = [{"text": f"distinct text number {i}", "label": "ab"[i % 2], "ref": i + 1} for i in range(40)]
    rows += [{"text": "Hello World", "label": "a", "ref": 41}, {"text": "hello   world ", "label": "b", "ref": 42}]
    rows += [{"text": "Same Thing", "label": "a", "ref": 43 + i} for i in range(3)]
    return rows


def test_split_keeps_duplicate_texts_together():
    rows = _split_rows()
    splits, rep = split_labeled(rows, DataConfig(), seed=0)
    split_of = {i: s for s in SPLITS for i in splits[s]}
    assert sorted(split_of) == list(range(len(rows)))  # every row in exactly one split
    assert split_of[40] == split_of[41]
    assert split_of[42] == split_of[43] == split_of[44]
    assert rep["rows"] == 45 and rep["groups"] == 42 and rep["grouped_rows"] == 5
    assert rep["conflicting_duplicates"] == 2  # "Hello World" labeled a and b
    assert sum(rep["split_sizes"].values()) == 45 and all(rep["split_sizes"].values())
    for s in SPLITS:
        assert rep["split_sizes"][s] == len(splits[s]) == sum(rep["label_counts"][s].values())
        want = {}
        for i in splits[s]:
            want[rows[i]["label"]] = want.get(rows[i]["label"], 0) + 1
        assert rep["label_counts"][s] == want
    assert split_labeled(rows, DataConfig(), seed=0)[0] == splits  # seeded: the same split again
    assert split_labeled(rows, DataConfig(), seed=1)[0] != splits


def test_builtin_task_on_the_real_head(shared_head, capsys):
    cfg = DataConfig(source=str(shared_head))
    got = load_labeled(cfg)
    assert got.builtin and len(got.rows.rows) == 356 and not got.rows.drops
    allowed = set(cfg.categories) | {"other"}
    assert all(r["label"] in allowed for r in got.rows.rows)
    assert got.rows.rows[0] == {"text": "Help me set up my daily to-do list!", "label": "data manipulation", "ref": 1}
    assert capsys.readouterr() == ("", "")
