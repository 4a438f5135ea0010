"""The Ollama TEMPLATE derived from a chat template renders exactly the prompts codelora trains on."""

import re

import pytest

from codelora.data.prompts import PromptFormat
from codelora.export.modelfile import modelfile, ollama_template

QUESTION = "Reverse a string {{ in }} Python"


def render_go(template: str, system: str = "", prompt: str = "", response: str | None = None) -> str:
    """Ollama's Go text/template, for the subset the exporter writes: if/else/end on .System,
    .System / .Prompt / .Response, and quoted literals. Without a response (the turn being
    generated) Ollama cuts the template at .Response."""
    values = {".System": system, ".Prompt": prompt, ".Response": response}
    out, stack = [], [True]  # stack: is the current branch being written
    for text, action in re.findall(r"([^{]*(?:\{(?!\{)[^{]*)*)(\{\{.*?\}\}|$)", template, flags=re.S):
        if all(stack):
            out.append(text)
        action = action[2:-2].strip()
        if not action:
            continue
        if action.startswith("if "):
            stack.append(bool(values[action[3:].strip()]))
        elif action == "else":
            stack[-1] = not stack[-1]
        elif action == "end":  # (if blocks only: enough for these templates)
            stack.pop()
        elif all(stack):
            if action == ".Response" and response is None:
                break
            out.append(action[1:-1] if action.startswith('"') else values[action])
    return "".join(out)


def test_the_renderer_can_tell_templates_apart():
    t = '{{ if .System }}S:{{ .System }}|{{ else }}none|{{ end }}{{ "{{" }}{{ .Prompt }}'
    assert render_go(t, prompt="q") == "none|{{q"
    assert render_go(t, system="s", prompt="q") == "S:s|{{q"


@pytest.mark.parametrize("chat_template", [True, False])
def test_template_reproduces_the_training_prompt(chat_template):
    from conftest import build_tokenizer

    fmt = PromptFormat(build_tokenizer(chat_template=chat_template))
    template = ollama_template(fmt)
    assert render_go(template, prompt=QUESTION) == fmt.prompt_text(QUESTION)
    assert render_go(template, prompt=QUESTION, response="") == fmt.prompt_text(QUESTION)  # without Ollama's cut
    if chat_template:  # a system message lands where the chat template puts it
        expected = fmt.tok.apply_chat_template([{"role": "system", "content": "Be terse."},
                                                {"role": "user", "content": QUESTION}],
                                               tokenize=False, add_generation_prompt=True)
        assert render_go(template, system="Be terse.", prompt=QUESTION) == expected
    # the answer is closed by the end-of-turn token the model was trained to emit
    assert render_go(template, prompt=QUESTION, response="A").endswith("A" + fmt.tok.decode([fmt.end_of_turn_id]))


def test_modelfile_lines():
    from conftest import build_tokenizer

    fmt = PromptFormat(build_tokenizer())
    text = modelfile(fmt, "model-q4_k_m.gguf", others=["model-f16.gguf"])
    lines = text.splitlines()
    assert "FROM ./model-q4_k_m.gguf" in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert "# other files here: replace FROM with ./model-f16.gguf" in lines
    assert text.count('TEMPLATE """') == 1 and "PARAMETER temperature 0" in lines
    lora = modelfile(fmt, "base-f16.gguf", adapter_name="adapter-f32.gguf")
    assert "ADAPTER ./adapter-f32.gguf" in lora.splitlines()
