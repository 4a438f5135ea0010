"""Related rows never cross splits; the tests check with their own comparison, not the code's."""

import itertools
import random
import re

from codelora.config import DataConfig
from codelora.data.dedup import cross_split_audit
from codelora.data.pipeline import curate, load_data
from codelora.data.split import SPLITS
from conftest import write_jsonl


def _norm(text):
    text = re.sub(r"```[a-z]*\n?", "", text)
    return " ".join(text.lower().split())


def _shingles(row):
    toks = re.findall(r"\w+|[^\w\s]", _norm(f"{row['instruction']}\n{row['input']}\n{row['output']}"))
    return {tuple(toks[i:i + 3]) for i in range(max(1, len(toks) - 2))}


def _answer_shingles(row):
    words = _norm(row["output"]).split()
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def cross_split_answer_pairs(cur, threshold=0.9):
    """(train ref, held-out ref, Jaccard) of answers alike on word 3-shingles, fences stripped (brute force)."""
    split_of = {i: s for s in SPLITS for i in cur.splits[s]}
    sh = [_answer_shingles(r) for r in cur.rows]
    found = []
    for a in cur.splits["train"]:
        for b in cur.splits["validation"] + cur.splits["test"]:
            jac = len(sh[a] & sh[b]) / len(sh[a] | sh[b])
            if jac >= threshold:
                found.append((cur.rows[a]["ref"], cur.rows[b]["ref"], split_of[b], round(jac, 3)))
    return sorted(found)


def cross_split_problems(cur, threshold=0.9):
    """Pairs in different splits that are exact or near duplicates (brute force over all pairs)."""
    split_of = {i: s for s in SPLITS for i in cur.splits[s]}
    rows = cur.rows
    sh = [_shingles(r) for r in rows]
    bad = []
    for a, b in itertools.combinations(range(len(rows)), 2):
        if split_of[a] == split_of[b]:
            continue
        ra, rb = rows[a], rows[b]
        jac = len(sh[a] & sh[b]) / len(sh[a] | sh[b])
        if (_norm(ra["instruction"]) == _norm(rb["instruction"]) or _norm(ra["output"]) == _norm(rb["output"])
                or jac >= threshold):
            bad.append((a, b))
    return bad


def planted_rows(n_base=120, seed=0):
    """Unrelated base rows, plus near copies (one token changed in the instruction and one in the
    code: Jaccard about 0.93, neither field equal) and exact-output copies."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
    base = []
    for i in range(n_base):
        name = f"{rng.choice(words)}_{i}"
        body = " + ".join(f"{rng.choice(words)}_{rng.randint(0, 999)}" for _ in range(80))
        base.append({"instruction": f"Write a function {name} that combines values number {i}.",
                     "input": "", "output": f"```python\ndef {name}(x):\n    return x + {body}\n```"})
    near = []
    for i in range(0, n_base, 4):
        r = base[i]
        near.append({**r, "instruction": r["instruction"].replace("combines", "merges"),
                     "output": r["output"].replace("return x +", "return 1 +")})
    exact = [{**base[i], "instruction": f"Another wording of task {i}, please."} for i in range(1, n_base, 10)]
    rows = base + near + exact
    rng.shuffle(rows)
    return rows, len(near), len(exact)


def test_planted_duplicates_stay_in_one_split(tmp_path):
    rows, n_near, n_exact = planted_rows()
    path = write_jsonl(tmp_path / "planted.jsonl", rows)
    cfg = DataConfig(source=str(path))
    cur = curate(load_data(cfg), cfg, seed=3)
    found = cur.split_report["related_pairs"]
    assert found["near duplicate"] >= n_near and found["exact output"] >= n_exact
    assert cur.split_report["grouped_rows"] == 2 * (n_near + n_exact)
    assert sum(cur.split_report["cross_split_pairs"].values()) == 0
    assert cross_split_problems(cur) == []
    sizes = cur.split_report["split_sizes"]
    n = len(rows)
    assert sum(sizes.values()) == n
    assert abs(sizes["test"] - 0.1 * n) <= 2 and abs(sizes["validation"] - 0.1 * n) <= 2
    # and the same split without grouping would leak: the planted pairs are real duplicates,
    # which both the brute-force check and the code's own audit see
    from codelora.data.split import split_groups

    naive = split_groups([[i] for i in range(len(cur.rows))], 0.1, 0.1, seed=3)  # every row its own group
    audit, flagged = cross_split_audit(cur.rows, naive, 0.9)
    cur.splits = naive
    assert cross_split_problems(cur) and audit["near duplicate"] > 0 and audit["exact output"] > 0
    assert any(p["relation"] == "near duplicate" and p["jaccard"] >= 0.9 for p in flagged)  # with their refs


def test_the_audit_compares_answers_as_well():
    """Two different questions around the same code, one literal apart: their whole texts are not
    near duplicates (so the grouping may split them), their answers are, and the audit reports them."""
    code = "\n".join(f"x{i} = x{i - 1} + {i}" for i in range(1, 21))
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
    rows = [{"instruction": " ".join(f"{w}{n}" for w in words * 2), "input": "",
             "output": f"```python\n{code}\nprint(x{n})\n```", "ref": n + 1} for n in range(3)]
    rows[1]["output"] = rows[0]["output"].replace("x20 = x19 + 20", "x20 = x19 + 99")
    rows[2]["output"] = "```python\nprint('nothing alike')\n```"
    got, flagged = cross_split_audit(rows, {"train": [0, 2], "validation": [1], "test": []}, 0.9)
    assert got == {"exact instruction": 0, "exact output": 0, "near duplicate": 0, "near duplicate answer": 1}
    assert flagged == [{"relation": "near duplicate answer", "train": 1, "validation": 2, "jaccard": flagged[0]["jaccard"]}]
    assert 0.9 <= flagged[0]["jaccard"] < 1


def test_real_head_audit_flags_the_one_answer_pair_across_splits(shared_head):
    cfg = DataConfig(source=str(shared_head))
    cur = curate(load_data(cfg), cfg, seed=42)
    assert cross_split_problems(cur) == []  # the grouping's relations never cross the split
    assert cur.split_report["grouped_rows"] == 10  # five outputs appear twice in the head
    # lines 256 (train) and 264 (validation): the same Ceneo price scraper, query 'laptop' vs
    # 's?uchawki Bluetooth'; the test's own brute-force comparison finds exactly this pair
    assert cross_split_answer_pairs(cur) == [(256, 264, "validation", 0.917)]
    assert cur.split_report["cross_split_pairs"] == {"exact instruction": 0, "exact output": 0, "near duplicate": 0,
                                                     "near duplicate answer": 1}
    assert cur.split_report["cross_split_near_duplicates"] == [
        {"relation": "near duplicate answer", "train": 256, "validation": 264, "jaccard": 0.917}]


def test_split_is_seeded():
    rows, _, _ = planted_rows(40)
    from codelora.data.validate import Rows

    src = Rows([{**r, "ref": i + 1} for i, r in enumerate(rows)], "mem", "local", "row", len(rows))
    a = curate(src, DataConfig(), seed=1).splits
    assert curate(src, DataConfig(), seed=1).splits == a
    assert curate(src, DataConfig(), seed=2).splits != a
