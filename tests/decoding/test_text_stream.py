"""Pieces of text released while tokens arrive: their concatenation is the final answer, a stop
string (even one split across tokens) is never released, and raw completions keep whitespace."""

from codelora.decoding.text_stream import TextStream
from conftest import build_tokenizer


def _feed(stream, ids):
    pieces = [stream.update(ids[:i]) for i in range(1, len(ids) + 1)]
    return pieces + [stream.finish()]


def test_pieces_add_up_to_the_stripped_answer():
    tok = build_tokenizer()
    ids = tok("  def f(x):\n    return x + 1\n\n", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    pieces = _feed(stream, ids)
    assert "".join(pieces) == stream.text == tok.decode(ids).strip()
    assert sum(1 for p in pieces if p) > 3


def test_a_stop_string_split_across_tokens_is_never_released():
    tok = build_tokenizer()
    ids = tok("print(1)\nEND_OF_IT and more text", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=("END_OF", "zzz"))
    released = ""
    for i in range(1, len(ids) + 1):
        released += stream.update(ids[:i])
        assert "E" not in released or released.endswith("print(1)")  # no prefix of the stop leaks early
        if stream.stopped:
            break
    released += stream.finish()
    assert stream.stopped and released == stream.text == "print(1)"


def test_raw_completions_keep_their_whitespace():
    tok = build_tokenizer()
    ids = tok(" x\n    return y\n", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, strip=False)
    assert "".join(_feed(stream, ids)) == tok.decode(ids) == stream.text
