"""The continuous batcher against transformers' own generate: the same greedy tokens for each
sequence whether it runs alone, in a batch with others, joins a batch mid-way, or shares the
forward pass with rows on other adapters; cancelled rows leave; stop strings end a row."""

import pytest
import torch

from codelora.config import GenerateConfig
from codelora.data.prompts import PromptFormat
from codelora.decoding.batcher import BASE, Batcher, Sequence
from conftest import build_tiny_model, build_tokenizer

QUESTIONS = ["Write add2.", "Write a Python function mul3(x) that applies * 3 to x.", "q",
             "Explain what a list comprehension is, in one sentence, with an example."]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    # wide random init: a default-init tiny model repeats one token, which would hide padding bugs
    return build_tiny_model(tok, init_range=0.3).eval(), PromptFormat(tok)


def _hf_greedy(model, fmt, ids, n):
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             eos_token_id=fmt.stop_ids, pad_token_id=fmt.stop_ids[0])
    return out[0, len(ids):].tolist()


def _seqs(fmt, n=14, **kw):
    return [Sequence(fmt.prompt_ids(q), GenerateConfig(max_new_tokens=n), **kw) for q in QUESTIONS]


def test_batch_equals_transformers_generate_one_at_a_time(tiny):
    model, fmt = tiny
    seqs = Batcher(model, fmt.tok, fmt.stop_ids, max_batch=4).run(_seqs(fmt))
    for seq in seqs:
        ref = _hf_greedy(model, fmt, seq.prompt, 14)
        assert seq.tokens == ref[:len(seq.tokens)] and len(seq.tokens) == len(ref)
    assert len({tuple(s.tokens) for s in seqs}) == len(seqs)


def test_sequences_joining_mid_way_get_the_same_tokens(tiny):
    model, fmt = tiny
    alone = [Batcher(model, fmt.tok, fmt.stop_ids, 1).run([s])[0].tokens for s in _seqs(fmt)]
    batcher = Batcher(model, fmt.tok, fmt.stop_ids, max_batch=3)
    seqs = _seqs(fmt)
    batcher.add(seqs[0])
    for _ in range(5):  # the first row is 5 tokens in when the others arrive; the 4th waits for a free slot
        batcher.step()
    for s in seqs[1:]:
        batcher.add(s)
    steps = 0
    while batcher.busy:
        batcher.step()
        steps += 1
        assert len(batcher.running) <= 3
    assert [s.tokens for s in seqs] == alone
    assert batcher.cache is None and batcher.mask is None  # nothing kept once idle


def test_mixed_adapters_in_one_batch_match_each_alone(tiny):
    from peft import LoraConfig, get_peft_model

    model, fmt = tiny
    torch.manual_seed(3)
    peft = get_peft_model(build_tiny_model(fmt.tok, init_range=0.3),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                          adapter_name="first").eval()
    peft.add_adapter("second", LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.mul_(20)
    names = ["first", BASE, "second", "first"]
    mixed = Batcher(peft, fmt.tok, fmt.stop_ids, 4).run(
        [Sequence(fmt.prompt_ids(q), GenerateConfig(max_new_tokens=12), adapter=a) for q, a in zip(QUESTIONS, names)])
    for seq, name in zip(mixed, names):
        if name == BASE:
            with peft.disable_adapter():
                ref = _hf_greedy(peft, fmt, seq.prompt, 12)
        else:
            peft.set_adapter(name)
            ref = _hf_greedy(peft, fmt, seq.prompt, 12)
        assert seq.tokens == ref, name
    assert mixed[0].tokens != Batcher(model, fmt.tok, fmt.stop_ids, 1).run(
        [Sequence(mixed[0].prompt, GenerateConfig(max_new_tokens=12))])[0].tokens  # the adapter matters


def test_cancelled_rows_leave_and_the_rest_continue(tiny):
    model, fmt = tiny
    batcher = Batcher(model, fmt.tok, fmt.stop_ids, 4)
    seqs = _seqs(fmt, n=30)
    ended = []
    for s in seqs:
        s.on_update = lambda seq, piece: ended.append(seq) if seq.done else None
        batcher.add(s)
    batcher.step()
    batcher.step()
    seqs[1].cancel()
    batcher.step()
    assert seqs[1].finish_reason == "cancelled" and seqs[1] not in batcher.running and len(seqs[1].tokens) == 2
    while batcher.busy:
        batcher.step()
    assert ended[0] is seqs[1] and all(s.finish_reason in ("stop", "length") for s in seqs if s is not seqs[1])


def test_seeded_sampling_is_the_same_alone_or_batched(tiny):
    model, fmt = tiny
    gen = GenerateConfig(max_new_tokens=10, temperature=0.9, top_p=0.9)
    def make():
        return [Sequence(fmt.prompt_ids(q), gen, seed=7 + i) for i, q in enumerate(QUESTIONS)]
    batched = Batcher(model, fmt.tok, fmt.stop_ids, 4).run(make())
    alone = [Batcher(model, fmt.tok, fmt.stop_ids, 1).run([s])[0] for s in make()]
    assert [s.tokens for s in batched] == [s.tokens for s in alone]
    other_seed = Batcher(model, fmt.tok, fmt.stop_ids, 1).run([Sequence(batched[3].prompt, gen, seed=99)])[0]
    assert other_seed.tokens != batched[3].tokens


def test_min_new_tokens_and_max_new_tokens(tiny):
    model, fmt = tiny
    fixed = Sequence(fmt.prompt_ids("q"), GenerateConfig(max_new_tokens=9), min_new_tokens=9)
    (seq,) = Batcher(model, fmt.tok, fmt.stop_ids, 1).run([fixed])
    assert len(seq.tokens) == 9 and seq.finish_reason == "length"
    assert not set(seq.tokens[:-1]) & set(fmt.stop_ids)


def test_stop_string_ends_the_row_and_is_not_returned(tiny):
    model, fmt = tiny
    (free,) = Batcher(model, fmt.tok, fmt.stop_ids, 1).run([Sequence(fmt.prompt_ids(QUESTIONS[1]),
                                                                     GenerateConfig(max_new_tokens=20))])
    assert len(free.text) > 6
    stop = free.text[3:5]
    pieces = []
    (seq,) = Batcher(model, fmt.tok, fmt.stop_ids, 1).run([Sequence(
        free.prompt, GenerateConfig(max_new_tokens=20), stop=(stop,), on_update=lambda s, p: pieces.append(p))])
    assert seq.finish_reason == "stop" and stop not in seq.text
    assert free.text.startswith(seq.text) and len(seq.text) <= 3
    assert "".join(pieces) == seq.text and len(seq.tokens) < len(free.tokens)
