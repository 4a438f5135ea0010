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
from codelora.serving.engine import Engine, Generation, GenerationJob
from codelora.serving.http_errors import ApiError, error_body, read_body
from codelora.serving.lifecycle import RequestLifecycle, engine_of, request_lifecycle, stop_strings
from codelora.serving.schemas import (DEFAULTS, REFUSED_CHAT, REFUSED_COMPLETION, ChatRequest, CompletionRequest,
                                      Sampling)

router = APIRouter(tags=["OpenAI-compatible"])


@router.get("/v1/models")
async def models(engine: Engine = Depends(engine_of)):
    names = [engine.base_name, *engine.adapters.names()]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "codelora"}
                                       for n in names]}


@router.post("/v1/chat/completions")
async def chat(request: Request, lifecycle: RequestLifecycle = Depends(request_lifecycle)):
    body: ChatRequest = await read_body(request, ChatRequest, REFUSED_CHAT)
    if body.messages[-1].role != "user":
        raise ApiError(422, "messages: the last message must be the user's", "messages")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
    ids = lifecycle.engine.chat_ids(messages)
    reply = Reply("chat", body.model, lifecycle.engine.base_name)
    return await answer(request, lifecycle, body, ids, body.max_completion_tokens or body.max_tokens, reply,
                        messages[-1]["content"])


@router.post("/v1/completions")
async def completions(request: Request, lifecycle: RequestLifecycle = Depends(request_lifecycle)):
    body: CompletionRequest = await read_body(request, CompletionRequest, REFUSED_COMPLETION)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(422, f"prompt: one prompt per request (got a list of {len(prompt)})", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise ApiError(422, "prompt: must not be empty", "prompt")
    engine = lifecycle.engine
    reply = Reply("text", body.model, engine.base_name)
    return await answer(request, lifecycle, body, engine.raw_ids(prompt), body.max_tokens, reply, prompt, strip=False)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def generation_job(lifecycle: RequestLifecycle, body: Sampling, ids: list[int], max_tokens: int | None,
                   strip: bool = True) -> GenerationJob:
    max_new = max_tokens or DEFAULTS.max_new_tokens
    lifecycle.check_lengths(max_new, body.min_tokens, "max_tokens", "min_tokens")
    adapter = None if body.model in (lifecycle.engine.base_name, "base") else body.model
    return GenerationJob(ids, adapter, GenerateConfig(max_new, body.temperature, body.top_p), body.seed,
                         body.min_tokens, stop=stop_strings(body.stop, lifecycle.settings.max_stops), strip=strip)


async def answer(request: Request, lifecycle: RequestLifecycle, body: Sampling, ids: list[int],
                 max_tokens: int | None, reply: "Reply", logged_prompt: str, strip: bool = True):
    """Run the request and answer with one JSON body, or with an SSE stream."""
    job = generation_job(lifecycle, body, ids, max_tokens, strip)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(request, lifecycle, job, reply, usage, logged_prompt)
        await anext(events)  # admits and queues the job now: a refusal is this response's status, not an event
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async with lifecycle.admit(job, reply.kind, logged_prompt, reply.id) as flight:
        g = await flight.answer(request)
    return Response(status_code=204) if g is None else reply.full(g)  # None: the client is gone


async def _sse(request: Request, lifecycle: RequestLifecycle, job: GenerationJob, reply: "Reply", usage: bool,
               logged_prompt: str):
    """The stream's events. Its first step only admits the job (yielding nothing to send), so that
    `answer` runs it before the response starts; the `async with` then lasts until the stream
    ends, also when the client goes away mid-stream (the task is cancelled, or the generator closed)."""
    async with lifecycle.admit(job, reply.kind + "-stream", logged_prompt, reply.id) as flight:
        yield ""  # admitted: `answer` consumed this
        if reply.kind == "chat":
            yield _event(reply.chunk(role=True, usage=usage))
        async for piece in flight.pieces(request):
            yield _event(reply.chunk(piece, usage=usage))
        g = flight.result()
        if g.finish_reason == "cancelled":
            return
        if g.finish_reason == "error":
            yield _event(error_body(500, "generation failed; see the server log"))
        else:
            yield _event(reply.chunk(finish=g.finish_reason, usage=usage))
            if usage:
                yield _event(reply.chunk(usage=usage, totals=g))
        yield "data: [DONE]\n\n"


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
