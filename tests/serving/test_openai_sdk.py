"""The official `openai` SDK against a real `codelora serve` process: chat and completions, with
and without streaming, `stop`, the models list, each error status as the SDK's exception;
continuous batching (simultaneous requests over three adapters and the base give the same
greedy text as one at a time), cancellation on disconnect, adapters loaded and unloaded at run time."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from adapters_helpers import save_plain_peft, train_with_codelora
from server_helpers import running_server

KEY = "sdk-test-key-4242"
QUESTION = "Write a Python function that reverses a string."
ADAPTERS = ["alpha", "plain-peft", "third"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny model with wide random weights: it writes varied text (a default-init one repeats a token)."""
    from conftest import build_tiny_model, build_tokenizer

    path = tmp_path_factory.mktemp("wide_tiny")
    tok = build_tokenizer()
    build_tiny_model(tok, init_range=0.3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    from conftest import make_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("sdk")
    root = tmp / "adapters"
    root.mkdir()
    train_with_codelora(tiny_model_dir, write_jsonl(tmp / "rows.jsonl", make_rows(40)), root / "alpha")
    save_plain_peft(tiny_model_dir, root / "plain-peft", seed=1)
    save_plain_peft(tiny_model_dir, root / "third", targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=3)
    return root


@pytest.fixture(scope="module")
def server(registry, tiny_model_dir, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("logs"), "--adapters", registry, "--model", tiny_model_dir,
                        "--max-batch", "8", env={"CODELORA_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _chat(client, model, content=QUESTION, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, **{"max_tokens": 24, **kw})


def _streamed_chat(client, model, content=QUESTION, **kw):
    stream = _chat(client, model, content, stream=True, stream_options={"include_usage": True}, **kw)
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish, usage


def test_chat_with_and_without_streaming(client):
    whole = _chat(client, "alpha")
    assert whole.object == "chat.completion" and whole.model == "alpha"
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length") and len(text) > 0
    pieces, finish, usage = _streamed_chat(client, "alpha")
    assert len(pieces) > 1 and "".join(pieces) == text and finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == whole.usage.prompt_tokens
    assert _chat(client, "base").choices[0].message.content != text  # the adapter acts
    fixed = _chat(client, "alpha", max_tokens=30, extra_body={"min_tokens": 30})  # vLLM's extension
    assert fixed.usage.completion_tokens == 30 and fixed.choices[0].finish_reason == "length"
    with pytest.raises(openai.UnprocessableEntityError, match="min_tokens"):
        _chat(client, "alpha", max_tokens=3, extra_body={"min_tokens": 4})


def test_completions_continue_a_raw_prompt(client, server):
    prompt = "def reverse(s):\n    return"
    whole = client.completions.create(model="base", prompt=prompt, max_tokens=16, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(model="base", prompt=prompt, max_tokens=16, temperature=0, stream=True)
    pieces = [c.choices[0].text for c in streamed if c.choices]
    assert "".join(pieces) == whole.choices[0].text and len([p for p in pieces if p]) > 1
    chat = _chat(client, "base", prompt, max_tokens=16).choices[0].message.content
    assert chat != whole.choices[0].text  # no chat template around a raw prompt
    assert whole.usage.prompt_tokens < _chat(client, "base", prompt, max_tokens=16).usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_answer_and_are_not_returned(client, stream):
    free = _chat(client, "plain-peft", max_tokens=40).choices[0].message.content
    assert len(free) > 12
    stop = free[8:11]
    if stream:
        pieces, finish, usage = _streamed_chat(client, "plain-peft", max_tokens=40, stop=[stop, "never-seen"])
        text = "".join(pieces)
    else:
        reply = _chat(client, "plain-peft", max_tokens=40, stop=stop)
        text, finish, usage = reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage
    assert finish == "stop" and stop not in text and free.startswith(text) and len(text) <= 8


def test_models_list(client, tiny_model_dir):
    ids = [m.id for m in client.models.list()]
    assert ids == [str(tiny_model_dir), *ADAPTERS]


def test_errors_are_the_sdks_exceptions(client, server):
    with pytest.raises(openai.NotFoundError, match="unknown adapter"):
        _chat(client, "no-such-adapter")
    with pytest.raises(openai.UnprocessableEntityError, match="logprobs: not supported"):
        _chat(client, "base", logprobs=True)
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        _chat(client, "base", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="context of 512 tokens") as e:
        _chat(client, "base", "word " * 600, max_tokens=8)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="not allowed"):
        _chat(client, "../etc")
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123", max_retries=0).models.list()
    assert _chat(client, "base", max_tokens=2).choices[0].message.content is not None  # still serving


def test_queue_bound_is_the_sdks_rate_limit_error(registry, tiny_model_dir, tmp_path):
    with running_server(tmp_path, "--adapters", registry, "--model", tiny_model_dir, "--max-queue", "1",
                        "--lazy") as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        stream = _chat(c, "base", max_tokens=460, stream=True)
        next(iter(stream))  # admitted and streaming
        with pytest.raises(openai.RateLimitError, match="server busy"):
            _chat(c, "base", max_tokens=2)
        stream.close()
        _wait_idle(s)
        assert _chat(c, "base", max_tokens=2).choices  # free again


def test_simultaneous_requests_over_adapters_match_one_at_a_time(client, server):
    models = ["base", "alpha", "plain-peft", "third", "alpha", "base", "third", "plain-peft"]
    questions = [f"{QUESTION} Call it rev{i}." for i in range(len(models))]
    alone = [_chat(client, m, q).choices[0].message.content for m, q in zip(models, questions)]
    before = server.get("/health", headers=_auth())[1]
    assert before["queue"]["peak_batch"] == 1
    before = before["completed"]
    barrier = threading.Barrier(len(models))

    def together(i):
        barrier.wait()
        return _chat(client, models[i], questions[i]).choices[0].message.content

    with ThreadPoolExecutor(len(models)) as pool:
        batched = list(pool.map(together, range(len(models))))
    assert batched == alone
    assert len(set(alone)) >= 4  # the adapters and questions really differ
    health = server.get("/health", headers=_auth())[1]
    assert health["completed"] - before == len(models)
    assert health["queue"]["peak_batch"] >= 3  # they really were decoded together (earlier tests ran one at a time)


def test_a_client_that_disconnects_frees_its_slot(client, server):
    streams = [_chat(client, m, max_tokens=460, stream=True) for m in ("base", "alpha", "third")]
    for s in streams:
        next(iter(s))
    for s in streams:
        s.close()
    _wait_idle(server)
    time.sleep(0.3)
    cancelled = re.findall(r"chat-stream model=(\S+) prompt_tokens=\d+ completion_tokens=(\d+) finish=cancelled",
                           server.log_text())
    assert len(cancelled) >= 3 and all(int(n) < 460 for _, n in cancelled[-3:])
    assert _chat(client, "alpha", max_tokens=3).choices[0].message.content is not None


def test_load_and_unload_adapters_at_run_time(client, server):
    before = _chat(client, "plain-peft").choices[0].message.content
    stream = _chat(client, "alpha", max_tokens=460, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    status, reply = server.post("/v1/load_lora_adapter", {"lora_name": "copy-of-plain", "lora_path": "plain-peft"},
                                headers=_auth())
    assert status == 200 and reply["name"] == "copy-of-plain", reply
    rest = [c for c in chunks]  # the stream that was running during the load completes normally
    assert rest and rest[-1].choices[0].finish_reason in ("stop", "length")
    assert _chat(client, "copy-of-plain").choices[0].message.content == before
    assert "copy-of-plain" in [m.id for m in client.models.list()]
    status, reply = server.post("/v1/unload_lora_adapter", {"lora_name": "copy-of-plain"}, headers=_auth())
    assert status == 200
    with pytest.raises(openai.NotFoundError):
        _chat(client, "copy-of-plain")
    assert server.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "alpha"})[0] == 401  # the key applies
    assert _chat(client, "plain-peft").choices[0].message.content == before
    assert first.choices[0].delta.role == "assistant"


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def _wait_idle(server, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        health = server.get("/health", headers=_auth())[1]
        if health["running"] == 0 and health["queued"] == 0:
            return health
        assert time.monotonic() < deadline, f"sequences left running after their clients left: {health}"
        time.sleep(0.05)


def test_sigterm_cancels_answers_in_progress_after_the_grace_period(registry, tiny_model_dir, tmp_path):
    """Ctrl-C / SIGTERM: the server stops accepting, waits --shutdown-grace seconds, then the answers
    still running or queued are cancelled, their streams end, and the process exits without a
    traceback. One decode slot and four long answers: the last ones are still queued at the signal."""
    with running_server(tmp_path, "--adapters", registry, "--model", tiny_model_dir, "--shutdown-grace", "0",
                        "--max-batch", "1", "--lazy") as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        streams = [_chat(c, "base", max_tokens=460, stream=True, extra_body={"min_tokens": 460}) for _ in range(4)]
        next(iter(streams[0]))
        s.proc.terminate()
        assert s.proc.wait(timeout=30) == 130  # like Ctrl-C
        log = s.log_text()
        assert "Traceback" not in log and "Finished server process" in log
        assert log.strip().splitlines()[-1] == "codelora: interrupted"
        ends = re.findall(r"chat-stream model=base prompt_tokens=\d+ completion_tokens=(\d+) finish=(\w+)", log)
        assert len(ends) == 4 and ("0", "cancelled") in ends, log[-1500:]
