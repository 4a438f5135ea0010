import pytest
from transformers import AutoTokenizer

from codelora.data.prompts import IGNORE_INDEX, PromptFormat, user_message
from codelora.data.split import split_groups
from codelora.errors import DataError

ROW = {"instruction": "Write add2.", "input": "x is an int", "output": "```python\ndef add2(x):\n    return x + 2\n```"}


def test_user_turn_is_instruction_plus_input():
    assert user_message(ROW) == "Write add2.\n\nx is an int"
    assert user_message({**ROW, "input": "  "}) == "Write add2."


def test_chat_template_supervises_only_answer_and_end_of_turn(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = PromptFormat(tok)
    assert fmt.uses_chat_template
    assert fmt.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    ex = fmt.encode(ROW)
    n_prompt = sum(1 for x in ex.labels if x == IGNORE_INDEX)
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert all(x != IGNORE_INDEX for x in ex.labels[n_prompt:])
    assert tok.decode(ex.input_ids[:n_prompt]) == "<|im_start|>user\nWrite add2.\n\nx is an int<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.labels[n_prompt:]) == ROW["output"] + "<|im_end|>"
    assert ex.n_supervised == len(ex.input_ids) - n_prompt


def test_plain_template_without_chat_template(tiny_plain_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_plain_model_dir)
    fmt = PromptFormat(tok)
    assert not fmt.uses_chat_template and fmt.end_of_turn_id == tok.eos_token_id
    ex = fmt.encode(ROW)
    n_prompt = sum(1 for x in ex.labels if x == IGNORE_INDEX)
    assert ex.input_ids[0] == tok.bos_token_id
    assert tok.decode(ex.input_ids[1:n_prompt]) == "### Instruction:\nWrite add2.\n\nx is an int\n\n### Response:\n"
    assert ex.labels[-1] == tok.eos_token_id


def test_too_long_rows_are_reported_not_kept(tiny_model_dir):
    fmt = PromptFormat(AutoTokenizer.from_pretrained(tiny_model_dir))
    long_row = {**ROW, "output": "x = 1\n" * 200}
    examples, too_long = fmt.encode_all([ROW, long_row, ROW], max_length=64)
    assert too_long == [1] and len(examples) == 2


def _singles(n: int) -> list[list[int]]:
    return [[i] for i in range(n)]  # n unrelated rows: every row its own group


def test_split_is_8_1_1_disjoint_and_seeded():
    s = split_groups(_singles(356), 0.1, 0.1, seed=42)
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes == {"train": 284, "validation": 36, "test": 36}
    all_ids = s["train"] + s["validation"] + s["test"]
    assert sorted(all_ids) == list(range(356))
    assert split_groups(_singles(356), 0.1, 0.1, seed=42) == s
    assert split_groups(_singles(356), 0.1, 0.1, seed=7)["test"] != s["test"]


def test_split_needs_three_rows_and_a_training_row():
    with pytest.raises(DataError, match="at least 3"):
        split_groups(_singles(2), 0.1, 0.1, seed=0)
    with pytest.raises(DataError, match="leave no training rows"):
        split_groups(_singles(4), 0.45, 0.45, seed=0)
    assert len(split_groups(_singles(3), 0.1, 0.1, seed=0)["train"]) == 1


def test_a_tokenizer_without_an_end_token_names_the_model():
    from codelora.data.prompts import PromptFormat, Seq2SeqFormat
    from codelora.errors import ModelError
    from conftest import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = None
    tok.eos_token = None
    tok.name_or_path = "acme/no-eos-7b"
    for fmt in (PromptFormat, Seq2SeqFormat):
        with pytest.raises(ModelError, match=r"tokenizer of 'acme/no-eos-7b' has no .*eos"):
            fmt(tok)
