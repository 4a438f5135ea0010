"""Answers become HTML for the page: code highlighted, everything else escaped."""

from codelora.serving.render import answer_html, highlight_css


def test_fenced_code_is_highlighted_and_text_escaped():
    html = answer_html("Here is <b>bold</b> and `x`:\n\n```python\ndef f(x):\n    return '<script>'\n```\nDone.")
    assert '<div class="hl">' in html and '<span class="k">def</span>' in html
    assert "<b>" not in html and "&lt;b&gt;" in html and "<script>" not in html and "&lt;script&gt;" in html
    assert "<code>x</code>" in html and html.rstrip().endswith("<p>Done.</p>")


def test_unclosed_fence_and_unknown_language():
    html = answer_html("```notalanguage\nprint(1)")
    assert '<div class="hl">' in html and "print" in html


def test_plain_answer_has_no_code_block():
    html = answer_html("Use a list comprehension.\nIt is short.")
    assert "hl" not in html and html == "<p>Use a list comprehension.<br>It is short.</p>"
    assert ".hl .k" in highlight_css()
