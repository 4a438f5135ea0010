import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelora.data.prompts import PromptFormat
from codelora.models.collate import collate


def test_fast_training_step_equals_the_plain_path(tiny_model_dir, rows, monkeypatch):
    """Fused frozen-head loss (chunked), budget splits: loss and LoRA gradients equal HF's full-logits loss.

    Tolerance: 1e-5 relative on the loss, 1e-6 absolute + 1e-4 relative on every gradient entry
    (float32 summation order differs between the paths).
    """
    import codelora.models.loss as loss_mod
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
