import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelora.data.prompts import IGNORE_INDEX, PromptFormat
from codelora.models.collate import collate
from codelora.models.loss import supervised_loss_sum


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
