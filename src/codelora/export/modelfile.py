"""Ollama's Modelfile for an exported GGUF: FROM, TEMPLATE, stop parameters.

The TEMPLATE is derived from the model's own chat template, not hand-written: the prompt for a
marker question is rendered (with and without a marker system message) and the markers are
replaced by Ollama's `{{ .System }}` and `{{ .Prompt }}`. Without a system message Ollama renders
exactly what `PromptFormat` builds (a template's default system prompt, like SmolLM2's, included);
the end-of-turn token follows `{{ .Response }}` only when there is one (a past turn).
"""

from __future__ import annotations

from codelora.export.converters import ExportError

SYSTEM_MARK, PROMPT_MARK = "CODELORASYSTEMMARK", "CODELORAPROMPTMARK"


def _go(text: str) -> str:
    """Literal text inside a Go template (only `{{` is special)."""
    return text.replace("{{", '{{ "{{" }}')


def _render(tok, messages: list[dict]) -> str | None:
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that refuse a system role
        return None


def ollama_template(fmt) -> str:
    plain = fmt.prompt_text(PROMPT_MARK)
    if plain.count(PROMPT_MARK) != 1:
        raise ExportError("the chat template does not place the question once; cannot write an Ollama TEMPLATE")
    before, after = plain.split(PROMPT_MARK)
    head = _go(before)
    if fmt.uses_chat_template:
        with_system = _render(fmt.tok, [{"role": "system", "content": SYSTEM_MARK},
                                        {"role": "user", "content": PROMPT_MARK}])
        if with_system and with_system.count(SYSTEM_MARK) == 1 and with_system.endswith(PROMPT_MARK + after):
            pre, rest = with_system.split(SYSTEM_MARK)
            mid = rest[: rest.index(PROMPT_MARK)]
            head = f"{{{{ if .System }}}}{_go(pre)}{{{{ .System }}}}{_go(mid)}{{{{ else }}}}{head}{{{{ end }}}}"
    end_of_turn = fmt.tok.decode([fmt.end_of_turn_id])
    # the end of turn only after a response: right whether or not Ollama cuts at .Response
    return f"{head}{{{{ .Prompt }}}}{_go(after)}{{{{ .Response }}}}{{{{ if .Response }}}}{_go(end_of_turn)}{{{{ end }}}}"


def stop_strings(fmt) -> list[str]:
    return [s for s in dict.fromkeys(fmt.tok.decode([i]) for i in fmt.stop_ids) if s.strip()]


def modelfile(fmt, gguf_name: str, adapter_name: str | None = None, temperature: float = 0.0,
              others: list[str] = ()) -> str:
    template = ollama_template(fmt)
    if '"""' in template:
        raise ExportError('the chat template contains """, which an Ollama Modelfile cannot quote')
    lines = ["# Ollama Modelfile written by codelora export. Use it with:",
             "#   ollama create NAME -f Modelfile && ollama run NAME",
             *(f"# other files here: replace FROM with ./{o}" for o in others),
             f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stop_strings(fmt)]
    lines.append(f"# the decoding codelora evaluated with ({'greedy' if temperature == 0 else 'sampled'})")
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n"


def _quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
