"""The EDA figures agree with an independent computation (pandas) on small fixtures."""

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from codelora.config import DataConfig, RunConfig
from codelora.data.pipeline import load_data
from codelora.data.prepare import data_report
from codelora.data.report import compute_stats
from codelora.io.rundir import REPORT_MD
from conftest import write_jsonl

ROWS = [
    {"instruction": "Create a list of squares", "input": "", "output": "```python\nsq = [i*i for i in range(9)]\n```"},
    {"instruction": "Create a csv file", "input": "Creating the file...", "output": "```python\nopen('a.csv', 'w').write('x')\n```"},
    {"instruction": "Scrape a web page", "input": "Scraping now", "output": "```python\nimport requests\nr = requests.get(url)\nprint(r.text)\n```"},
    {"instruction": "Check the prime numbers", "input": "Checking primes", "output": "```python\nprint('broken)\n```"},
    {"instruction": "Say hi", "input": "", "output": "print('hi')"},
    {"instruction": "Create a list of squares", "input": "", "output": "```python\nsq = list(map(lambda i: i*i, range(9)))\n```"},
]


@pytest.fixture
def fixture_rows():
    rows = [dict(r) for r in ROWS]
    for i, r in enumerate(rows):
        r["text"] = f"{r['instruction']} {r['input']} {r['output']}" if i != 2 else "something else"
    return rows


def test_figures_match_pandas(tmp_path, fixture_rows, tiny_model_dir):
    path = write_jsonl(tmp_path / "rows.jsonl", fixture_rows)
    cfg = DataConfig(source=str(path))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stats, tok_lens = compute_stats(load_data(cfg), cfg, tok)
    df = pd.DataFrame(fixture_rows)
    for col in ("instruction", "input", "output", "text"):
        assert stats["unique"][col] == df[col].nunique()
        expected = df[col].str.len().describe()
        got = stats["chars"][col]
        for key in ("count", "mean", "std", "min", "25%", "50%", "75%", "max"):
            assert got[key] == pytest.approx(expected[key]), (col, key)
        tokens = pd.Series([len(tok(t, add_special_tokens=False)["input_ids"]) for t in df[col]]).describe()
        assert stats["tokens"][col]["mean"] == pytest.approx(tokens["mean"])
        assert stats["tokens"][col]["max"] == tokens["max"]
    first = df["instruction"].str.split().str[0].str.lower().value_counts()
    assert dict(stats["first_words"]["instruction"]) == first.to_dict()
    assert stats["empty_input_rows"] == int((df["input"] == "").sum()) == 3
    inputs = df.loc[df["input"] != "", "input"].str.split().str[0].str.lower().value_counts()
    assert dict(stats["first_words"]["input"]) == inputs.to_dict()
    assert stats["text_equals_concat"] == {"rows_with_text": 6, "matches": 5}
    # 5 of 6 code blocks parse (not the unclosed string); of the raw outputs only the unfenced one does
    assert stats["ast_parse"]["code_block_before_cleaning"] == pytest.approx(5 / 6)
    assert stats["ast_parse"]["raw_output"] == pytest.approx(1 / 6)
    cats = stats["categories"]
    assert cats["web scraping"] == 1 and cats["algorithm"] == 1 and cats["file io"] >= 1
    assert cats["data manipulation"] == 3  # list, csv, list
    assert stats["lines_per_output"]["max"] == 3
    assert sorted(tok_lens) == ["input", "instruction", "output", "text"]


def test_report_command_writes_markdown_json_and_real_charts(tmp_path, fixture_rows, tiny_model_dir):
    path = write_jsonl(tmp_path / "rows.jsonl", fixture_rows)
    cfg = RunConfig()
    cfg.data.source = str(path)
    cfg.model.name = str(tiny_model_dir)
    out = tmp_path / "report"
    from transformers import AutoTokenizer

    stats = data_report(cfg, out, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert json.loads((out / "stats.json").read_text())["unique"] == stats["unique"]
    md = (out / REPORT_MD).read_text()
    assert "Rows whose `text` equals" in md and "| instruction | 5 |" in md
    import matplotlib.image as mpimg

    for name in ("chars_hist.png", "tokens_hist.png", "first_words.png", "categories.png", "lines_per_output.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in md
        img = mpimg.imread(png)
        assert img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 0.01  # not a blank canvas
