"""The OpenAI-compatible API: what the official SDK, editor plug-ins and chat front-ends call.

    GET  /v1/models              the base and every adapter in the registry or loaded
    POST /v1/chat/completions    chat (the model's template), `stream: true` for SSE
    POST /v1/completions         a raw prompt continued (no template), `stream: true` for SSE

`model` names the base (its name or "base") or an adapter. Streams follow OpenAI's chunk format,
end with `data: [DONE]` and, with `stream_options.include_usage`, carry a last chunk of usage.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from codelora.config import GenerateConfig
from codelora.serving.engine import Generation, Request as EngineRequest
from codelora.serving.errors import ApiError, error_body, read_body
from codelora.serving.schemas import (DEFAULTS, REFUSED_CHAT, REFUSED_COMPLETION, ChatRequest, CompletionRequest,
                                      Sampling)
from codelora.serving.state import ServerState, server_state, stop_strings
from codelora.serving.streams import Stream

router = APIRouter(tags=["OpenAI-compatible"])


@router.get("/v1/models")
async def models(st: ServerState = Depends(server_state)):
    names = [st.engine.base_name, *st.engine.adapters.names()]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "codelora"}
                                       for n in names]}


@router.post("/v1/chat/completions")
async def chat(request: Request, st: ServerState = Depends(server_state)):
    body: ChatRequest = await read_body(request, ChatRequest, REFUSED_CHAT)
    if body.messages[-1].role != "user":
        raise ApiError(422, "messages: the last message must be the user's", "messages")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
    ids = st.engine.chat_ids(messages)
    reply = Reply("chat", body.model, st.engine.base_name)
    return await answer(request, st, body, ids, body.max_completion_tokens or body.max_tokens, reply,
                        messages[-1]["content"])


@router.post("/v1/completions")
async def completions(request: Request, st: ServerState = Depends(server_state)):
    body: CompletionRequest = await read_body(request, CompletionRequest, REFUSED_COMPLETION)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(422, f"prompt: one prompt per request (got a list of {len(prompt)})", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise ApiError(422, "prompt: must not be empty", "prompt")
    reply = Reply("text", body.model, st.engine.base_name)
    return await answer(request, st, body, st.engine.raw_ids(prompt), body.max_tokens, reply, prompt, strip=False)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def engine_request(st: ServerState, body: Sampling, ids: list[int], max_tokens: int | None,
                   strip: bool = True) -> EngineRequest:
    max_new = max_tokens or DEFAULTS.max_new_tokens
    st.check_lengths(max_new, body.min_tokens, "max_tokens", "min_tokens")
    adapter = None if body.model in (st.engine.base_name, "base") else body.model
    return EngineRequest(ids, adapter, GenerateConfig(max_new, body.temperature, body.top_p), body.seed,
                         body.min_tokens, stop=stop_strings(body.stop, st.settings.max_stops), strip=strip)


async def answer(request: Request, st: ServerState, body: Sampling, ids: list[int], max_tokens: int | None,
                 reply: "Reply", logged_prompt: str, strip: bool = True):
    """Run the request and answer with one JSON body, or with an SSE stream."""
    stream = await st.start(engine_request(st, body, ids, max_tokens, strip))
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(request, st, stream, reply, usage, logged_prompt), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    g = await st.finish(request, stream, reply.kind, logged_prompt, reply.id)
    return Response(status_code=204) if g is None else reply.full(g)  # None: the client is gone


async def _sse(request: Request, st: ServerState, stream: Stream, reply: "Reply", usage: bool, logged_prompt: str):
    g = None
    try:
        if reply.kind == "chat":
            yield _event(reply.chunk(role=True, usage=usage))
        async for piece in stream.pieces(request):
            yield _event(reply.chunk(piece, usage=usage))
        g = st.engine.result(stream.seq)
        if g.finish_reason == "cancelled":
            return
        if g.finish_reason == "error":
            yield _event(error_body(500, "generation failed; see the server log"))
        else:
            yield _event(reply.chunk(finish=g.finish_reason, usage=usage))
            if usage:
                yield _event(reply.chunk(usage=usage, totals=g))
        yield "data: [DONE]\n\n"
    finally:  # also when the client went away mid-stream (the task is cancelled)
        stream.cancel()
        st.admission.leave()
        g = g or st.engine.result(stream.seq)
        st.log_request(reply.kind + "-stream", g, logged_prompt, reply.id)


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Reply:
    """The response objects of one request, in OpenAI's shapes: 'chat' (chat.completion[.chunk])
    or 'text' (text_completion)."""

    def __init__(self, kind: str, model: str, base_name: str):
        self.kind, self.model = kind, model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.fingerprint = f"codelora-{base_name}"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    def chunk(self, piece: str | None = None, finish: str | None = None, role: bool = False, usage: bool = False,
              totals: Generation | None = None) -> dict:
        if totals is not None:  # the usage chunk: no choices
            return self._head(self._chunk_object) | {"choices": [], "usage": _usage(totals)}
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if role else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return self._head(self._chunk_object) | {"choices": [choice]} | ({"usage": None} if usage else {})

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def full(self, g: Generation) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "logprobs": None,
                      "finish_reason": g.finish_reason}
            return self._head("chat.completion") | {"choices": [choice], "usage": _usage(g)}
        choice = {"index": 0, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
        return self._head("text_completion") | {"choices": [choice], "usage": _usage(g)}


def _usage(g: Generation) -> dict:
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}
