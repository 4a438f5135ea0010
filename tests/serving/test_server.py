"""`codelora serve` as a user runs it: a real process, real HTTP, real adapters on a tiny model."""

import sys
import threading
import time

import pytest

from adapters_helpers import save_other_base_model, save_plain_peft, train_with_codelora
from server_helpers import running_server
import warm

SECRET = "Zebra-Quasar-7781 reverse a string"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    from conftest import make_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "adapters"
    root.mkdir()
    data = write_jsonl(tmp / "rows.jsonl", make_rows(40))
    train_with_codelora(tiny_model_dir, data, root / "alpha")
    save_plain_peft(tiny_model_dir, root / "plain-peft")
    save_plain_peft(save_other_base_model(tmp / "other_base"), root / "other.base")
    save_plain_peft(tiny_model_dir, tmp / "outside")
    (root / "escape").symlink_to(tmp / "outside")
    (root / "notes").mkdir()
    return root


@pytest.fixture(scope="module")
def server(registry, tiny_model_dir, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("logs"), "--adapters", registry, "--model", tiny_model_dir) as s:
        yield s


def test_health_lists_and_models(server, tiny_model_dir):
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok" and health["base_model"] == str(tiny_model_dir)
    assert health["adapters_loaded"] == ["alpha", "plain-peft"] and not health["auth_required"]
    from dataclasses import asdict

    from codelora.config import GenerateConfig

    assert health["defaults"] == asdict(GenerateConfig())  # what requests that leave fields out get
    status, listing = server.get("/v1/adapters")
    by_name = {a["name"]: a for a in listing["adapters"]}
    assert status == 200 and sorted(by_name) == ["alpha", "other.base", "plain-peft"]  # no escape, no notes
    assert by_name["alpha"]["loaded"] and by_name["alpha"]["r"] == 16 and by_name["alpha"]["size_bytes"] > 0
    assert not by_name["other.base"]["loaded"] and "was trained on base model" in by_name["other.base"]["error"]
    status, models = server.get("/v1/models")
    assert [m["id"] for m in models["data"]] == [str(tiny_model_dir), "alpha", "other.base", "plain-peft"]
    log = server.log_text()
    assert "not serving: adapter other.base was trained on base model" in log
    assert "ignored (not an adapter folder, or a name/location that is refused): escape, notes" in log


def test_generate_with_base_and_adapters(server):
    seen = {}
    for adapter in (None, "alpha", "plain-peft", None):
        body = {"prompt": "Write a Python function add2(x).", "max_new_tokens": 6}
        if adapter:
            body["adapter"] = adapter
        status, g = server.post("/v1/generate", body)
        assert status == 200, g
        assert g["model"] == (adapter or "base") and g["finish_reason"] in ("stop", "length")
        assert 1 <= g["usage"]["completion_tokens"] <= 6 and g["usage"]["prompt_tokens"] > 5
        seen.setdefault(adapter, []).append(g["text"])
    assert seen[None][0] == seen[None][1]  # greedy, and the base is unchanged after adapters ran


def test_chat_completions_in_openai_shape(server):
    body = {"model": "plain-peft", "max_tokens": 5, "user": "ignored-field",
            "messages": [{"role": "system", "content": "You write Python."},
                         {"role": "user", "content": "Reverse a string."}]}
    status, c = server.post("/v1/chat/completions", body)
    assert status == 200, c
    assert c["object"] == "chat.completion" and c["model"] == "plain-peft" and c["id"].startswith("chatcmpl-")
    choice = c["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
    status, c = server.post("/v1/chat/completions", body | {"model": "base"})
    assert status == 200 and c["model"] == "base"


BAD = [  # (path, JSON body or raw bytes, status, words the message must hold)
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": -3}, 422, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 5000}, 422, "limit of 1024"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": "5"}, 422, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 4, "min_new_tokens": 5}, 422, "min_new_tokens"),
    ("/v1/generate", {"prompt": "x", "stop": ["ok", ""]}, 422, "stop: at most 8 non-empty strings"),
    ("/v1/generate", b'{"prompt": "x", "temperature": NaN}', 422, "temperature: Input should be a finite number"),
    ("/v1/generate", b'{"prompt": "x", "temperature": Infinity}', 422, "temperature"),
    ("/v1/generate", {"prompt": "x", "temperature": -0.5}, 422, "temperature"),
    ("/v1/generate", {"prompt": "x", "top_p": 0}, 422, "top_p"),
    ("/v1/generate", {"prompt": "x", "top_p": 1.01}, 422, "top_p"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 500}, 400, "exceeds the model's context of 512"),
    ("/v1/generate", {"prompt": "word " * 600, "max_new_tokens": 8}, 400, "shorten the prompt"),
    ("/v1/generate", {"prompt": "x", "adapter": "nope"}, 404, "unknown adapter 'nope'"),
    ("/v1/generate", {"prompt": "x", "adapter": "../outside"}, 400, "not allowed"),
    ("/v1/generate", {"prompt": "x", "adapter": "/etc/passwd"}, 400, "not allowed"),
    ("/v1/generate", {"prompt": "x", "adapter": "escape"}, 400, "outside the adapter directory"),
    ("/v1/generate", {"prompt": "x", "adapter": "other.base"}, 409, "was trained on base model"),
    ("/v1/generate", {"prompt": ""}, 422, "prompt"),
    ("/v1/generate", {"max_new_tokens": 4}, 422, "prompt: Field required"),
    ("/v1/generate", {"prompt": "x", "tempreature": 0.5}, 422, "tempreature: Extra inputs are not permitted"),
    ("/v1/generate", b'{"prompt": "x",', 400, "malformed JSON"),
    ("/v1/generate", b"[1, 2]", 400, "must be an object"),
    ("/v1/generate", b"", 400, "needs a JSON body"),
    ("/v1/generate", b'{"prompt": "' + b"a" * 70_000 + b'"}', 413, "over the limit of 65536 bytes"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "unknown adapter"),
    ("/v1/chat/completions", {"model": "alpha", "messages": []}, 422, "messages"),
    ("/v1/chat/completions", {"model": "alpha", "messages": [{"role": "robot", "content": "x"}]}, 422, "role"),
    ("/v1/chat/completions", {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
     422, "max_tokens"),
    ("/v1/chat/completions", {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
     422, "stream"),
    ("/v1/generate", b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "nested too deeply"),
    ("/v1/generate", b'{"prompt": "x", "extra": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", 400, "nested too deeply"),
    ("/v1/generate", b'{"prompt": "x", "seed": 99999999999999999999999}', 422, "seed"),
    ("/v1/chat/completions", b'{"model": "base", "messages": [{"role": "user", "content": "x"}], '
                             b'"seed": -99999999999999999999999}', 422, "seed"),
    ("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 10**30}, 422, "max_tokens"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
     422, "logprobs: not supported"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}], "n": 2},
     422, "n: not supported"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 422, "tools: not supported"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}}, 422, "response_format: not supported"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": [""]},
     422, "stop"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 9},
     422, "stop"),
    ("/v1/completions", {"model": "base", "prompt": "x", "echo": True}, 422, "echo: not supported"),
    ("/v1/completions", {"model": "base", "prompt": "x", "suffix": "y"}, 422, "suffix: not supported"),
    ("/v1/completions", {"model": "base", "prompt": ["x", "y"]}, 422, "one prompt per request"),
    ("/v1/completions", {"model": "base", "prompt": ""}, 422, "prompt"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "unknown adapter"),
    ("/v1/load_lora_adapter", {"lora_name": "x"}, 422, "lora_path"),
    ("/v1/load_lora_adapter", {"lora_name": "../x", "lora_path": "alpha"}, 400, "not allowed"),
    ("/v1/load_lora_adapter", {"lora_name": "x2", "lora_path": "/etc"}, 400, "outside the adapter directory"),
    ("/v1/load_lora_adapter", {"lora_name": "x3", "lora_path": "../outside"}, 400, "outside the adapter directory"),
    ("/v1/load_lora_adapter", {"lora_name": "x4", "lora_path": "notes"}, 404, "not an adapter folder"),
    ("/v1/load_lora_adapter", {"lora_name": "alpha", "lora_path": "plain-peft"}, 400, "already loaded"),
    ("/v1/load_lora_adapter", {"lora_name": "x5", "lora_path": "other.base"}, 409, "was trained on base model"),
    ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}, 404, "not loaded"),
    ("/v1/chat/completions", {"model": "alpha", "messages": [{"role": "assistant", "content": "x"}]}, 422,
     "last message must be the user's"),
]


@pytest.mark.parametrize("path, body, status, words", BAD, ids=[f"{i}-{b[3][:30]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_with_a_message(server, path, body, status, words):
    raw = body if isinstance(body, bytes) else None
    got, reply = server.post(path, None if raw is not None else body, raw=raw)
    assert got == status, reply
    assert words in reply["error"]["message"]
    # and the server keeps serving, with nothing new loaded by a refused name
    ok, g = server.post("/v1/generate", {"prompt": "x", "max_new_tokens": 2})
    assert ok == 200 and g["usage"]["completion_tokens"] >= 1
    assert server.get("/health")[1]["adapters_loaded"] == ["alpha", "plain-peft"]


def test_the_number_of_stop_strings_is_the_servers_max_stops():
    from codelora.serving.http_errors import ApiError
    from codelora.serving.lifecycle import stop_strings

    assert stop_strings(["a", "b"], 2) == ("a", "b") and stop_strings("a", 1) == ("a",)
    with pytest.raises(ApiError, match="stop: at most 1 non-empty strings"):
        stop_strings(["a", "b"], 1)


def test_unknown_paths_and_methods_are_json_4xx(server):
    assert server.get("/v1/nothing")[0] == 404
    status, reply = server.get("/v1/generate")
    assert status == 405 and "error" in reply


def test_prompts_are_not_logged_by_default(server):
    status, _ = server.post("/v1/generate", {"prompt": SECRET, "max_new_tokens": 3})
    assert status == 200
    time.sleep(0.3)
    log = server.log_text()
    assert "generate model=base prompt_tokens=" in log  # requests are logged ...
    assert SECRET not in log and "Zebra" not in log  # ... their text is not


def test_requests_over_the_queue_bound_get_429(registry, tiny_model_dir, tmp_path):
    with running_server(tmp_path, "--adapters", registry, "--model", tiny_model_dir, "--max-queue", "1",
                        "--lazy") as s:
        results = {}

        def long_request():
            results["first"] = s.post("/v1/generate", {"prompt": "x", "max_new_tokens": 480, "adapter": "alpha"})

        worker = threading.Thread(target=long_request)
        worker.start()
        deadline = time.monotonic() + 30
        while s.get("/health")[1]["queue"]["admitted"] < 1:  # wait until the first one is running
            assert time.monotonic() < deadline and worker.is_alive(), "the first request never showed as admitted"
            time.sleep(0.005)
        status, reply = s.post("/v1/generate", {"prompt": "y", "max_new_tokens": 2})
        still_running = worker.is_alive()
        worker.join(60)
        assert still_running, "the first request ended before the second was sent; the test proves nothing"
        assert status == 429 and "server busy" in reply["error"]["message"]
        assert results["first"][0] == 200
        status, _ = s.post("/v1/generate", {"prompt": "y", "max_new_tokens": 2})  # free again
        assert status == 200
        assert s.get("/health")[1]["adapters_loaded"] == ["alpha"]  # --lazy: loaded on first use only


def test_non_loopback_address_needs_an_api_key(registry, tiny_model_dir, tmp_path):
    r = warm.run([sys.executable, "-m", "codelora", "serve", "--adapters", str(registry), "--host", "0.0.0.0"],
                 capture_output=True, text=True, timeout=60, env={**__import__("os").environ,
                                                                  "CODELORA_API_KEY": ""})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "CODELORA_API_KEY" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    key = "k3y-for-tests-0123"
    with running_server(tmp_path, "--adapters", registry, "--model", tiny_model_dir, "--log-prompts", "--lazy",
                        host="0.0.0.0", env={"CODELORA_API_KEY": key}) as s:
        assert s.get("/health")[0] == 200 and s.get("/health")[1]["auth_required"]
        status, reply = s.post("/v1/generate", {"prompt": SECRET, "max_new_tokens": 2})
        assert status == 401 and "API key" in reply["error"]["message"]
        assert s.get("/v1/adapters", headers={"Authorization": "Bearer wrong-key-000"})[0] == 401
        assert s.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert s.post("/ui/render", {"text": "x"})[0] == 401 and s.get("/")[0] != 401
        status, _ = s.post("/v1/generate", {"prompt": SECRET, "max_new_tokens": 2}, headers={"X-API-Key": key})
        assert status == 200
        time.sleep(0.3)
        assert SECRET in s.log_text()  # --log-prompts: the opt-in works (so the default test can fail)
