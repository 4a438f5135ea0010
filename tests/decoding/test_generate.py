from codelora.config import GenerateConfig
from codelora.data.prompts import PromptFormat
from codelora.decoding.generate import generate_answers
from conftest import build_tiny_model, build_tokenizer


def test_batched_greedy_equals_one_at_a_time():
    tok = build_tokenizer()
    # wide random init: a default-init tiny model repeats one token, which would hide padding bugs
    model, fmt = build_tiny_model(tok, init_range=0.3).eval(), PromptFormat(tok)
    questions = ["Write add2.", "Write a Python function mul3(x) that applies * 3 to x.", "q"]
    gen = GenerateConfig(max_new_tokens=12)
    batched = generate_answers(model, fmt, questions, gen, batch_size=3, device="cpu")
    single = [generate_answers(model, fmt, [q], gen, 1, "cpu")[0] for q in questions]
    assert batched == single
    assert len(set(batched)) == 3 and all(len(a) > 5 for a in batched)
