"""One row of each malformation: exact per-reason counts with line numbers."""

import json

import pytest

from codelora.config import DataConfig
from codelora.data.pipeline import load_data
from codelora.errors import DataError

GOOD = {"instruction": "Write add2.", "input": "", "output": "def add2(x):\n    return x + 2"}


def malformed_file(tmp_path, n_good=40):
    lines = [json.dumps({**GOOD, "instruction": f"Write add{i}."}).encode() for i in range(n_good)]
    bad = {
        "malformed JSON": b'{"instruction": "x", "input": ',
        "non-UTF-8 bytes": b'{"instruction": "caf\xe9", "input": "", "output": "x"}',
        "missing field": json.dumps({"instruction": "a", "input": ""}).encode(),
        "wrong type": json.dumps({**GOOD, "output": 42}).encode(),
        "empty instruction": json.dumps({**GOOD, "instruction": "  "}).encode(),
        "empty output": json.dumps({**GOOD, "output": ""}).encode(),
        "over length limit": json.dumps({**GOOD, "output": "x" * 5000}).encode(),
    }
    expected = {}
    for k, (reason, line) in enumerate(bad.items()):
        pos = 3 + 5 * k  # spread the bad rows through the file
        lines.insert(pos, line)
    for lineno, line in enumerate(lines, 1):
        for reason, b in bad.items():
            if line == b:
                expected[reason] = [lineno]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is not a row
    return path, expected


def test_each_malformation_is_counted_with_its_line(tmp_path):
    path, expected = malformed_file(tmp_path)
    rows = load_data(DataConfig(source=str(path), max_chars=1000, max_drop_fraction=0.5))
    assert rows.drops == expected
    assert rows.drop_counts() == {k: 1 for k in expected}
    assert len(rows.rows) == 40 and rows.total == 47 and rows.ref_kind == "line"
    assert {r["ref"] for r in rows.rows}.isdisjoint(v[0] for v in expected.values())


def test_too_many_drops_fail(tmp_path):
    path, _ = malformed_file(tmp_path)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source=str(path), max_chars=1000))  # 7 of 47 > 5%
    assert "7 of 47 rows failed validation" in str(e.value) and "data.max_drop_fraction=0.05" in str(e.value)


def test_csv_row_with_bad_bytes_is_dropped_alone(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"instruction,input,output\nok,,print(1)\nbad \xff,,print(2)\nfine,,print(3)\n")
    rows = load_data(DataConfig(source=str(path), max_drop_fraction=0.5))
    assert rows.drops == {"non-UTF-8 bytes": [2]} and [r["output"] for r in rows.rows] == ["print(1)", "print(3)"]


def test_limit_counts_records_of_the_file_bad_lines_included(tmp_path):
    path, expected = malformed_file(tmp_path)
    rows = load_data(DataConfig(source=str(path), limit=10, max_chars=1000, max_drop_fraction=0.5))
    assert rows.total == 10
    assert rows.drops == {k: v for k, v in expected.items() if v[0] <= 10}  # lines 4 and 9 are bad
    assert len(rows.rows) == 8 and max(r["ref"] for r in rows.rows) == 10


def test_byte_order_mark_and_lone_surrogates(tmp_path):
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfinstruction,input,output\nq,,print(1)\nr,,print(2)\n")
    assert len(load_data(DataConfig(source=str(csv_path))).rows) == 2
    jsonl = tmp_path / "bom.jsonl"
    good = json.dumps(GOOD)
    jsonl.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n" + good.encode() + b"\n"
                      + b'{"instruction": "a\\udc80", "input": "", "output": "x"}\n')
    rows = load_data(DataConfig(source=str(jsonl), max_drop_fraction=0.5))
    assert len(rows.rows) == 2 and rows.drops == {"non-UTF-8 bytes": [3]}
