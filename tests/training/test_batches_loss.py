import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelora.data.prompts import IGNORE_INDEX, Example, PromptFormat
from codelora.training.batches import collate, length_grouped_batches
from codelora.training.loss import supervised_loss_sum


def test_collate_pads_right_and_masks_pads():
    b = collate([Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


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


def test_fast_loss_equals_the_full_logits_loss(tiny_model_dir, rows):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fmt = PromptFormat(tok)
    batch = collate([fmt.encode(r) for r in rows[:6]], tok.pad_token_id)
    with torch.no_grad():
        s, n = supervised_loss_sum(model, batch)
        reference = model(**batch).loss  # transformers: mean over labels != -100, full vocabulary logits
    assert n == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(s / n, reference, atol=1e-5)
