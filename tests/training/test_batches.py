from codelora.data.prompts import Example
from codelora.training.batches import length_grouped_batches


def test_length_grouped_batches_cover_every_row_once_and_are_seeded():
    examples = [Example([1] * n, [1] * n) for n in range(1, 101)]
    batches = length_grouped_batches(examples, 8, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(100))
    assert all(len(b) <= 8 for b in batches)
    assert length_grouped_batches(examples, 8, seed=3) == batches
    assert length_grouped_batches(examples, 8, seed=4) != batches
    # grouping keeps each batch's lengths close: far less padding than a random batch
    spread = max(max(len(examples[i].input_ids) for i in b) - min(len(examples[i].input_ids) for i in b) for b in batches)
    assert spread <= 20


def test_split_to_budget_keeps_every_row_and_bounds_padded_tokens():
    from codelora.training.batches import split_to_budget

    examples = [Example([1] * n, [1] * n) for n in (50, 10, 200, 40, 120, 30)]
    pieces = split_to_budget(list(range(6)), examples, max_tokens=250)
    assert sorted(i for p in pieces for i in p) == list(range(6))
    assert all(len(p) * max(len(examples[i].input_ids) for i in p) <= 250 or len(p) == 1 for p in pieces)
    assert pieces[0] == [2]  # longest first: 200 alone, then 120 + ... within budget
    assert split_to_budget([0, 1], examples, max_tokens=10_000) == [[0, 1]]
