"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against the real
server with the embedded model: a chat whose answers stream in from /v1/chat/completions, follow-up
questions that carry the earlier turns, and a Stop button that cancels the generation on the server."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from server_helpers import running_server

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("CODELORA_CHROMIUM", "/usr/bin/chromium")
QUESTION = "Write a Python function that returns the square of a number."
FOLLOW_UP = "Now add a docstring to that function."
RAMBLE = ("Explain in great detail everything about Python lists, dictionaries, sets and tuples, "
          "with many long code examples for each one.")
CHAT_PATH = "/v1/chat/completions"
ASSISTANT = "#messages .turn.assistant"

# Polled every 50 ms in the page while an answer is generated: the answer's text each time it is seen
# streaming (and how many elements it holds: it must be plain text until the end); returns the turn's
# final state. Each poll is its own task, so two different lengths mean the text
# grew on screen between two polls, not in one go when the response was complete.
SAMPLE = """(index) => {
  const turn = document.querySelectorAll('#messages .turn.assistant')[index];
  if (!turn) return false;
  const body = turn.querySelector('.body');
  if (turn.dataset.state === 'streaming') {
    if (body.textContent.length > 0) window.__samples.push([body.textContent, body.childElementCount]);
    return false;
  }
  return turn.dataset.state;
}"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CODELORA_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and CODELORA_REQUIRE_BROWSER is set (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the web page test needs a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(embedded_adapter, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("web"), "--adapters", embedded_adapter.parent) as s:
        yield s


def _screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real rendered page, not an empty file
    keep = os.environ.get("CODELORA_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _open(browser, server):
    """The page, once it has listed the adapters; and the list of /v1/chat/completions bodies it sends."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith(CHAT_PATH) else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model option[value='python-qa']", state="attached", timeout=30_000)
    return page, sent


def _ask(page, question, model, max_new_tokens):
    """Ask in the current chat; the index of the assistant turn that will hold the answer."""
    index = page.locator(ASSISTANT).count()
    page.fill("#question", question)
    page.fill("#max-new-tokens", str(max_new_tokens))
    page.select_option("#model", model)
    page.evaluate("window.__samples = []")
    assert page.is_enabled("#ask") and page.is_disabled("#stop")
    page.click("#ask")
    return index


def _until_answered(page, index):
    """Wait for the answer's end, sampling it meanwhile: (final state, [(text, elements) while streaming])."""
    state = page.wait_for_function(SAMPLE, arg=index, polling=50, timeout=300_000).json_value()
    return state, [tuple(s) for s in page.evaluate("window.__samples")]


def _shows(page, server, turn, text: str) -> bool:
    """Whether the finished assistant turn shows exactly `text`: its HTML is /ui/render's HTML of it."""
    status, rendered = server.post("/ui/render", {"text": text})
    assert status == 200
    return page.evaluate("""([turn, html]) => {
      const d = document.createElement('div');
      d.innerHTML = html;  // serialized by the browser, like the turn's
      return document.querySelectorAll('#messages .turn.assistant')[turn].querySelector('.body').innerHTML
        === d.innerHTML;
    }""", [turn, rendered["html"]])


def test_chat_streams_answers_and_sends_the_history(browser, server, tmp_path, embedded_adapter):
    adapter = embedded_adapter.name
    page, sent = _open(browser, server)
    assert "smollm2-135m" in page.inner_text("#model option[value='']")
    from codelora.config import GenerateConfig  # the page shows the server's decoding defaults

    assert page.input_value("#max-new-tokens") == str(GenerateConfig().max_new_tokens)
    assert float(page.input_value("#temperature")) == GenerateConfig().temperature
    assert page.is_hidden("#key-label")  # no API key asked for on loopback

    # 1. a question to the adapter: the answer grows on screen as plain text, then is highlighted
    first = _ask(page, QUESTION, adapter, 64)
    state, samples = _until_answered(page, first)
    assert state == "done"
    texts = [text for text, _ in samples]
    assert len(set(texts)) >= 2, f"the answer was not seen growing while it streamed: {samples}"
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # each piece is appended
    assert all(elements == 0 for _, elements in samples)  # plain text (textContent) while streaming
    turn = page.locator(ASSISTANT).nth(first)
    assert turn.get_attribute("data-model") == adapter
    assert turn.locator(".body .hl, .body p").count() >= 1  # the finished answer is highlighted HTML
    status = page.inner_text("#status")
    assert status.startswith(f"{adapter}: ") and re.search(r"\d+ tokens? in [\d.]+ s", status)
    assert sent[0]["model"] == adapter and sent[0]["stream"] is True and sent[0]["max_tokens"] == 64
    assert sent[0]["messages"] == [{"role": "user", "content": QUESTION}]

    # 2. a follow-up to the base model in the same chat carries the first exchange as history
    second = _ask(page, FOLLOW_UP, "", 48)
    state, _ = _until_answered(page, second)
    assert state == "done" and second == first + 1
    assert len(sent) == 2 and sent[1]["model"] == "base"
    history = sent[1]["messages"]
    assert [(m["role"], m["content"]) for m in history[::2]] == [("user", QUESTION), ("user", FOLLOW_UP)]
    assert len(history) == 3 and history[1]["role"] == "assistant"
    first_answer = history[1]["content"]  # the first answer as it streamed in, and as it is shown
    assert first_answer.strip() and first_answer.startswith(texts[-1])
    assert _shows(page, server, first, first_answer)
    assert [t.strip() for t in page.locator("#messages .turn.user .body").all_inner_texts()] == [QUESTION, FOLLOW_UP]
    assert [page.locator(ASSISTANT).nth(i).get_attribute("data-state") for i in (0, 1)] == ["done", "done"]
    assert page.locator(f"{ASSISTANT} .body").nth(0).inner_text().strip()  # the first answer is still there
    assert "smollm2-135m:" in page.inner_text("#status")
    assert page.is_hidden("#error")
    _screenshot(page, tmp_path, "web-chat.png")

    # 3. a refused request (4xx) shows the server's message and leaves the chat as it was
    page.fill("#question", "One more question.")
    page.fill("#max-new-tokens", "5000")
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "limit of 1024" in page.inner_text("#error")
    assert page.locator(ASSISTANT).count() == 2 and page.locator("#messages .turn.user").count() == 2
    assert page.is_enabled("#ask") and page.is_disabled("#stop")
    page.close()


def test_stop_cancels_the_generation_on_the_server(browser, server, tmp_path, embedded_adapter):
    page, sent = _open(browser, server)
    index = _ask(page, RAMBLE, embedded_adapter.name, 400)
    page.wait_for_function(f"""() => {{
        const t = document.querySelectorAll('{ASSISTANT}')[{index}];
        return t && t.dataset.state === 'streaming' && t.querySelector('.body').textContent.length >= 30;
    }}""", polling=50, timeout=300_000)
    assert page.is_enabled("#stop") and page.is_disabled("#ask")
    page.click("#stop")
    turn = page.locator(ASSISTANT).nth(index)
    assert turn.get_attribute("data-state") == "stopped"
    assert "stopped" in turn.locator(".who").inner_text()
    partial = turn.locator(".body").inner_text()
    assert partial.strip()  # the partial answer stays on screen
    assert page.is_enabled("#ask") and page.is_disabled("#stop")  # usable again at once
    assert "stopped after" in page.inner_text("#status")

    # the server frees the slot: the closed connection cancelled the sequence (400 tokens take far longer)
    deadline = time.monotonic() + 10
    while True:
        status, health = server.get("/health")
        assert status == 200
        if health["running"] == 0 and health["queued"] == 0 and health["queue"]["admitted"] == 0:
            break
        assert time.monotonic() < deadline, f"the stopped generation still holds its slot: {health}"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    cancelled = re.compile(rf"chat-stream model={re.escape(embedded_adapter.name)} prompt_tokens=\d+ "
                           r"completion_tokens=(\d+) finish=cancelled")
    while not (m := cancelled.search(server.log_text())):
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)
    assert int(m.group(1)) < 400
    _screenshot(page, tmp_path, "web-stopped.png")

    # "New chat" clears the conversation: the next question goes alone
    page.click("#new-chat")
    assert page.locator("#messages .turn").count() == 0 and page.inner_text("#status") == ""
    index = _ask(page, QUESTION, "", 16)
    state, _ = _until_answered(page, index)
    assert state == "done" and index == 0
    assert sent[-1]["messages"] == [{"role": "user", "content": QUESTION}]
    page.close()


def test_the_page_parses_server_sent_events_split_anywhere(browser, server):
    """The page's SSE reader on a body delivered in odd pieces: lines and UTF-8 characters cut in
    two, CRLF line ends, comments, a multi-line data field, and no blank line after the last event."""
    page, _ = _open(browser, server)
    events = page.evaluate("""async () => {
      const body = ': a comment\\r\\ndata: {"a": "π → ✓"}\\r\\n\\r\\ndata: one\\ndata: two\\n\\n' +
                   'event: x\\ndata:no-space\\n\\ndata: [DONE]';
      const bytes = new TextEncoder().encode(body);
      const results = [];
      for (const size of [1, 2, 3, 5, 7, bytes.length]) {
        const stream = new ReadableStream({ start(c) {
          for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
          c.close();
        } });
        const got = [];
        for await (const data of sseData(new Response(stream))) got.push(data);
        results.push(got);
      }
      return results;
    }""")
    expected = ['{"a": "π → ✓"}', "one\ntwo", "no-space", "[DONE]"]
    assert events == [expected] * 6
    page.close()
