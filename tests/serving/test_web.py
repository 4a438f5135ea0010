"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against the real
server with the embedded model: type a question, pick the adapter, read the highlighted answer."""

import os
import shutil
from pathlib import Path

import pytest

from server_helpers import running_server

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("CODELORA_CHROMIUM", "/usr/bin/chromium")
QUESTION = "Write a Python function that returns the square of a number."


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


def test_ask_a_question_in_the_browser(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_selector("#model option[value='python-qa']", state="attached", timeout=30_000)
    assert "smollm2-135m" in page.inner_text("#model option[value='']")
    from codelora.config import GenerateConfig  # the page shows the server's decoding defaults

    assert page.input_value("#max-new-tokens") == str(GenerateConfig().max_new_tokens)
    assert float(page.input_value("#temperature")) == GenerateConfig().temperature
    page.fill("#question", QUESTION)
    page.fill("#max-new-tokens", "64")
    page.select_option("#model", "python-qa")
    page.click("#ask")
    page.wait_for_function("document.querySelector('#answer').innerText.trim().length > 0", timeout=180_000)
    answer = page.inner_text("#answer")
    status = page.inner_text("#status")
    assert answer.strip() and "python-qa:" in status and "tokens in" in status
    assert page.get_attribute("#answer", "data-model") == "python-qa"
    assert page.locator("#answer .hl").count() >= 1  # the answer's code block is highlighted
    assert "def " in page.inner_text("#answer .hl")
    assert page.is_hidden("#error") and page.is_hidden("#key-label")  # no API key asked for on loopback
    _screenshot(page, tmp_path, "web-answer.png")

    # the same page shows API errors instead of failing silently
    page.fill("#max-new-tokens", "5000")
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "limit of 1024" in page.inner_text("#error")
    page.close()
