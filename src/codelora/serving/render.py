"""Answers as HTML for the web page: fenced code blocks highlighted by Pygments, the rest escaped."""

from __future__ import annotations

import html
import re

FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)  # an unclosed fence runs to the end
INLINE_CODE = re.compile(r"`([^`\n]+)`")
CSS_CLASS = "hl"


def _text_html(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for p in paragraphs:
        escaped = INLINE_CODE.sub(r"<code>\1</code>", html.escape(p)).replace("\n", "<br>")
        out.append(f"<p>{escaped}</p>")
    return "".join(out)


def _code_html(code: str, language: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language) if language else PythonLexer()  # answers are Python by default
    except ClassNotFound:
        lexer = PythonLexer()
    return highlight(code, lexer, HtmlFormatter(cssclass=CSS_CLASS))


def answer_html(answer: str) -> str:
    """HTML for a model answer; nothing in it is trusted (all text escaped, no raw HTML kept)."""
    parts, pos = [], 0
    for m in FENCE.finditer(answer):
        parts.append(_text_html(answer[pos:m.start()]))
        parts.append(_code_html(m.group(2), m.group(1).lower()))
        pos = m.end()
    parts.append(_text_html(answer[pos:]))
    return "".join(parts)


def highlight_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(f".{CSS_CLASS}")
