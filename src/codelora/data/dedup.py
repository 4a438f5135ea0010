"""Duplicate and near-duplicate groups, so that related rows always land in the same split, and the
audit of the split that checks it.

Two rows are related when their normalised instructions match, their normalised outputs match,
or their whole texts are near-duplicates: Jaccard similarity of token 3-shingles at or above a
threshold, found with MinHash LSH (datasketch) and then confirmed exactly. Related rows are
joined transitively (union-find) into groups.

The split audit (`cross_split_audit`, after the split) finds the related pairs that cross it
afresh (other hash functions, other comparisons) rather than from the grouping, so a fault there
cannot hide. Besides the grouping's relations it compares answers: word 3-shingles of the
normalised answer (fences stripped, lower case, whitespace collapsed) at or above the threshold.
That is what a question reworded around the same code looks like: two web-scraper answers that
differ only in their query string are 0.917 alike this way, while their whole texts, diluted by
two different questions, are not. The grouping does not use this relation (docs/decisions.md,
"The split audit compares answers"), so such a pair is reported, not moved. Near duplicates are
found with an LSH index of the training rows with many bands (b=32, r=4: at J=0.9 a miss is
~1e-14 likely), queried with every validation and test row and confirmed by exact Jaccard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from codelora.console import progress
from codelora.data.clean import strip_fences

TOKEN = re.compile(r"\w+|[^\w\s]")
SHINGLE = 3
NUM_PERM = 128
CHUNK = 2000  # rows hashed per MinHash.bulk call, so a bar moves while a large file is hashed


def normalize(text: str) -> str:
    """Lower-case, no code fences, whitespace collapsed: what 'the same text' means here."""
    return " ".join(strip_fences(text).lower().split())


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    toks = TOKEN.findall(normalize(text))
    if len(toks) <= k:
        return {" ".join(toks)}
    return {" ".join(toks[i:i + k]) for i in range(len(toks) - k + 1)}


def row_text(row: dict) -> str:
    return f"{row['instruction']}\n{row['input']}\n{row['output']}"


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


@dataclass
class Relations:
    exact_instruction: list[tuple[int, int]]
    exact_output: list[tuple[int, int]]
    near_duplicate: list[tuple[int, int]]

    def all_pairs(self) -> list[tuple[int, int]]:
        return self.exact_instruction + self.exact_output + self.near_duplicate


def _exact_pairs(keys: list[str]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for i, k in enumerate(keys):
        if k in first:
            pairs.append((first[k], i))
        else:
            first[k] = i
    return pairs


def minhashes(sets: list[set[str]], seed: int = 1):
    from datasketch import MinHash

    return MinHash.bulk([[s.encode() for s in sh] for sh in sets], num_perm=NUM_PERM, seed=seed)


def iter_minhashes(sets: list[set[str]], seed: int = 1, desc: str = "hashing"):
    """minhashes(sets) one by one, computed CHUNK rows at a time under a bar (unit "row")."""
    with progress(total=len(sets), desc=desc, unit="row") as bar:
        for start in range(0, len(sets), CHUNK):
            for mh in minhashes(sets[start:start + CHUNK], seed):
                yield mh
                bar.update(1)  # after the caller's work on this row: the bar covers hashing and matching


def lsh_bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) tuned for recall at `threshold`.

    A pair with Jaccard J becomes a candidate with probability 1 - (1 - J^r)^b. Choosing r so
    that threshold^r >= 0.4 and b = 128 // r misses about 1e-4 of the pairs at J = 0.9 (b=16,
    r=8); the exact Jaccard check then removes the extra candidates this lets in.
    """
    r = 16 if threshold >= 0.99 else max(1, int(math.log(0.4) / math.log(threshold)))
    return NUM_PERM // r, r


def near_duplicate_pairs(sets: list[set[str]], threshold: float) -> list[tuple[int, int]]:
    """Pairs (i < j) with Jaccard >= threshold; LSH proposes candidates, exact Jaccard decides."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(num_perm=NUM_PERM, params=lsh_bands(threshold))
    pairs = set()
    for i, mh in enumerate(iter_minhashes(sets, desc="near duplicates")):  # hashing and matching, row by row
        for j in lsh.query(mh):
            if jaccard(sets[i], sets[j]) >= threshold:
                pairs.add((j, i))
        lsh.insert(i, mh)
    return sorted(pairs)


def find_relations(rows: list[dict], threshold: float) -> Relations:
    return Relations(
        exact_instruction=_exact_pairs([normalize(r["instruction"]) for r in rows]),
        exact_output=_exact_pairs([normalize(r["output"]) for r in rows]),
        near_duplicate=near_duplicate_pairs([shingles(row_text(r)) for r in rows], threshold),
    )


def group_related(rows: list[dict], threshold: float) -> tuple[list[list[int]], Relations]:
    """The grouping stage: related rows joined into groups (positions in rows), and the relations found."""
    relations = find_relations(rows, threshold)
    return groups_of(len(rows), relations), relations


def groups_of(n: int, relations: Relations) -> list[list[int]]:
    uf = UnionFind(n)
    for a, b in relations.all_pairs():
        uf.union(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return list(groups.values())


AUDIT_SEED = 7  # MinHash functions other than the grouping's (seed 1)
AUDIT_BANDS = (32, 4)


def answer_shingles(output: str, k: int = 3) -> set[str]:
    """Word k-shingles of the normalised answer (words: runs of non-space characters)."""
    words = normalize(output).split()
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def cross_split_audit(rows: list[dict], splits: dict[str, list[int]],
                      threshold: float) -> tuple[dict[str, int], list[dict]]:
    """(pairs across splits per relation, each near-duplicate pair across splits with its refs and Jaccard)."""
    split_of = {i: s for s, idx in splits.items() for i in idx}
    counts = {}
    for name, key in (("exact instruction", "instruction"), ("exact output", "output")):
        seen: dict[str, set[str]] = {}
        for i, r in enumerate(rows):
            seen.setdefault(normalize(r[key]), set()).add(split_of[i])
        counts[name] = sum(len(s) - 1 for s in seen.values())
    flagged = []
    for name, sets, bar in (("near duplicate", [shingles(row_text(r)) for r in rows], "split audit"),
                            ("near duplicate answer", [answer_shingles(r["output"]) for r in rows], "answer audit")):
        pairs = _near_pairs(sets, splits, threshold, bar)
        counts[name] = len(pairs)
        flagged += [{"relation": name, "train": rows[j]["ref"], split_of[i]: rows[i]["ref"], "jaccard": round(jac, 3)}
                    for i, j, jac in pairs]
    return counts, flagged


def _near_pairs(sets: list[set[str]], splits: dict[str, list[int]], threshold: float,
                bar: str) -> list[tuple[int, int, float]]:
    """(held-out position, training position, Jaccard) of each pair at or above `threshold`."""
    from datasketch import MinHashLSH

    hashes = list(iter_minhashes(sets, seed=AUDIT_SEED, desc=f"{bar}: hashing"))
    lsh = MinHashLSH(num_perm=NUM_PERM, params=AUDIT_BANDS)
    for i in splits["train"]:
        lsh.insert(i, hashes[i])
    held_out = splits["validation"] + splits["test"]
    pairs = []
    for i in progress(held_out, desc=f"{bar}: matching", unit="row"):
        for j in sorted(lsh.query(hashes[i])):
            if (jac := jaccard(sets[i], sets[j])) >= threshold:
                pairs.append((i, j, jac))
    return pairs
