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


def test_split_to_budget_keeps_every_row_and_bounds_padded_tokens():
    from codelora.training.batches import split_to_budget

    examples = [Example([1] * n, [1] * n) for n in (50, 10, 200, 40, 120, 30)]
    pieces = split_to_budget(list(range(6)), examples, max_tokens=250)
    assert sorted(i for p in pieces for i in p) == list(range(6))
    assert all(len(p) * max(len(examples[i].input_ids) for i in p) <= 250 or len(p) == 1 for p in pieces)
    assert pieces[0] == [2]  # longest first: 200 alone, then 120 + ... within budget
    assert split_to_budget([0, 1], examples, max_tokens=10_000) == [[0, 1]]


def test_fast_training_step_equals_the_plain_path(tiny_model_dir, rows, monkeypatch):
    """Fused frozen-head loss (chunked), budget splits: loss and LoRA gradients equal HF's full-logits loss.

    Tolerance: 1e-5 relative on the loss, 1e-6 absolute + 1e-4 relative on every gradient entry
    (float32 summation order differs between the paths).
    """
    import codelora.training.loss as loss_mod
    from codelora.config import LoraSettings
    from codelora.models.lora import apply_lora
    from codelora.training.step import StepContext, train_step

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = PromptFormat(tok)
    examples = [fmt.encode(r) for r in rows[:8]]
    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_sup = sum(e.n_supervised for e in examples)

    # plain path: one batch, full vocabulary logits, transformers' own mean loss
    model.train()
    batch = collate(examples, tok.pad_token_id)
    plain = model(**batch).loss
    (plain).backward()
    plain_grads = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)

    # fast path: two micro-batches, split again by a tiny token budget, head chunks of 7 rows
    monkeypatch.setattr(loss_mod, "HEAD_CHUNK", 7)
    ctx = StepContext(model, tok.pad_token_id, "cpu", max_batch_tokens=64, dtype=torch.float32)
    loss_sum, tokens = train_step(ctx, examples, [[0, 1, 2, 3], [4, 5, 6, 7]], n_sup)
    assert tokens == sum(len(e.input_ids) for e in examples)
    assert abs(loss_sum / n_sup - plain.item()) <= 1e-5 * plain.item()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, plain_grads[n], atol=1e-6, rtol=1e-4, msg=n)
    assert any(g.abs().max() > 1e-4 for g in plain_grads.values())  # the comparison is not between zeros
