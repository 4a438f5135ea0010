"""The HTTP API and web page: a FastAPI app around one Engine.

    GET  /health                 liveness, base model, queue depth (no key needed)
    GET  /v1/adapters            the registry's adapters (loaded or not, and why not)
    GET  /v1/models              OpenAI-style list: the base and every adapter
    POST /v1/generate            {prompt, adapter?, max_new_tokens?, temperature?, top_p?, seed?}
    POST /v1/chat/completions    OpenAI-style; `model` names the base or an adapter
    GET  /                       the web page (static/), which calls the API above

Generation runs on one worker thread (the model is shared state); at most `max_queue` requests
are admitted at once (running + waiting), the rest get 429 at once rather than piling up.
Every error is JSON `{"error": {"message", "type"}}` with a 4xx status, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codelora.config import GenerateConfig, ServeConfig
from codelora.serving.engine import AdapterLoadError, ContextLengthError, Engine
from codelora.serving.registry import AdapterNameError, UnknownAdapterError

log = logging.getLogger("codelora.serve")
DEFAULTS = GenerateConfig()  # request fields left out take the configured decoding defaults
# reachable without the API key: the page and its assets, liveness, the API's own documentation
PUBLIC_PATHS = {"/", "/health", "/ui/highlight.css", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# -- request bodies -------------------------------------------------------------------------------


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str = Field(min_length=1, description="the question; the model's chat template is applied")
    adapter: str | None = Field(None, description="an adapter name from /v1/adapters; omitted: the base model")
    max_new_tokens: int = Field(DEFAULTS.max_new_tokens, ge=1)
    temperature: float = Field(DEFAULTS.temperature, ge=0.0, allow_inf_nan=False, description="0: greedy")
    top_p: float = Field(DEFAULTS.top_p, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = None
    min_new_tokens: int = Field(0, ge=0, description="generate at least this many tokens (fixed-length benchmarks)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    # OpenAI clients send fields we do not use (user, presence_penalty, ...): ignored, not refused
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(DEFAULTS.temperature, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(DEFAULTS.top_p, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: Literal[False] = Field(False, description="streaming is not supported")


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


async def parse(request: Request, model: type[BaseModel]):
    """The JSON body as `model`; any content type is read as JSON (curl's default form type too)."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON in the request body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, _describe(e.errors())) from None


def _describe(problems: list[dict]) -> str:
    """'field: what is wrong' for the first problem (pydantic's text), and how many more."""
    first = problems[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg')}{more}"


# -- middleware -----------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_error(send, 413, f"request body over the limit of {self.limit} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body over the limit of {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except ApiError as e:
            await _send_error(send, e.status, e.message)


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


async def _send_error(send, status: int, message: str):
    await error_response(status, message)({"type": "http"}, None, send)


# -- the app --------------------------------------------------------------------------------------
def create_app(engine: Engine, settings: ServeConfig) -> FastAPI:
    app = FastAPI(title="codelora", summary="LoRA adapters for Python code questions", docs_url="/docs",
                  redoc_url=None)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codelora-generate")
    state = {"admitted": 0, "completed": 0}

    error = error_response
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(e.status, e.message, e.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return error(422, _describe(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):  # a bug or an environment failure: logged, one line to the client
        log.exception("request failed")
        return error(500, f"internal error: {type(e).__name__}", "server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        path = request.scope["path"]
        public = path in PUBLIC_PATHS or path.startswith("/static/")
        if settings.api_key and not public:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
                or request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error")
        return await call_next(request)

    async def run(fn, *args, **kwargs):
        """Admit the request to the bounded queue (or 429), then run `fn` on the worker thread."""
        if state["admitted"] >= settings.max_queue:
            raise ApiError(429, f"server busy: {state['admitted']} requests queued or running "
                                f"(limit {settings.max_queue}); retry later", "rate_limit_error")
        state["admitted"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(worker, lambda: fn(*args, **kwargs))
        finally:
            state["admitted"] -= 1
            state["completed"] += 1

    def call_engine(ids, adapter, max_new_tokens, temperature, top_p, seed, min_new_tokens=None):
        try:
            return engine.generate(ids, adapter, GenerateConfig(max_new_tokens, temperature, top_p), seed,
                                   min_new_tokens)
        except AdapterNameError as e:
            raise ApiError(400, str(e)) from None
        except UnknownAdapterError as e:
            raise ApiError(404, str(e), "not_found") from None
        except AdapterLoadError as e:
            raise ApiError(409, str(e)) from None
        except ContextLengthError as e:
            raise ApiError(400, str(e), "context_length_exceeded") from None

    def check_max_new_tokens(value: int, field: str) -> None:
        if value > settings.max_new_tokens_limit:
            raise ApiError(422, f"{field}: {value} is above this server's limit of {settings.max_new_tokens_limit}")

    def log_request(kind: str, g, prompt: str, request_id: str):
        extra = f" prompt={prompt!r} answer={g.text!r}" if settings.log_prompts else ""
        log.info("%s %s model=%s prompt_tokens=%d completion_tokens=%d %.2fs%s", request_id, kind, g.model,
                 g.prompt_tokens, g.completion_tokens, g.seconds, extra)

    @app.get("/health")
    async def health():
        return {"status": "ok", "base_model": engine.base_name, "device": engine.device,
                "context_length": engine.context_length, "adapters_loaded": sorted(engine.adapters),
                "queue": {"admitted": state["admitted"], "limit": settings.max_queue},
                "completed": state["completed"], "auth_required": bool(settings.api_key),
                "max_new_tokens_limit": settings.max_new_tokens_limit, "defaults": dataclasses.asdict(DEFAULTS)}

    @app.get("/v1/adapters")
    async def adapters():
        items = []
        for name in engine.registry.names() if engine.registry else []:
            loaded = engine.adapters.get(name)
            item = {"name": name, "loaded": loaded is not None}
            if loaded:
                item |= loaded.info | {"load_seconds": round(loaded.load_seconds, 3)}
            if name in engine.failed:
                item["error"] = engine.failed[name]
            items.append(item)
        return {"base_model": engine.base_name, "adapters": items}

    @app.get("/v1/models")
    async def models():
        names = [engine.base_name] + (engine.registry.names() if engine.registry else [])
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "codelora"} for n in names]}

    @app.post("/v1/generate")
    async def generate(request: Request):
        body = await parse(request, GenerateRequest)
        check_max_new_tokens(body.max_new_tokens, "max_new_tokens")
        if body.min_new_tokens > body.max_new_tokens:
            raise ApiError(422, f"min_new_tokens: {body.min_new_tokens} is above max_new_tokens {body.max_new_tokens}")
        request_id = uuid.uuid4().hex[:12]
        ids = engine.question_ids(body.prompt)
        g = await run(call_engine, ids, body.adapter, body.max_new_tokens, body.temperature, body.top_p, body.seed,
                      body.min_new_tokens or None)
        log_request("generate", g, body.prompt, request_id)
        return {"id": request_id, "text": g.text, "model": g.model, "base_model": engine.base_name,
                "finish_reason": g.finish_reason, "seconds": round(g.seconds, 3),
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
                "tokens_per_s": round(g.completion_tokens / g.seconds, 2) if g.seconds > 0 else None}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await parse(request, ChatRequest)
        if body.messages[-1].role != "user":
            raise ApiError(422, "messages: the last message must be the user's")
        max_new = body.max_completion_tokens or body.max_tokens or DEFAULTS.max_new_tokens
        check_max_new_tokens(max_new, "max_tokens")
        adapter = None if body.model in (engine.base_name, "base") else body.model
        messages = [m.model_dump() for m in body.messages]
        request_id = "chatcmpl-" + uuid.uuid4().hex[:12]
        ids = engine.chat_ids(messages)
        g = await run(call_engine, ids, adapter, max_new, body.temperature, body.top_p, body.seed)
        log_request("chat", g, messages[-1]["content"], request_id)
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()),
                "model": body.model, "system_fingerprint": f"codelora-{engine.base_name}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": g.finish_reason}],
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "total_tokens": g.prompt_tokens + g.completion_tokens}}

    # -- web page ---------------------------------------------------------------------------------
    static = resources.files("codelora.serving") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (static / "index.html").read_text(encoding="utf-8")

    @app.post("/ui/render")
    async def render(request: Request):
        body = await parse(request, RenderRequest)
        from codelora.serving.render import answer_html

        return {"html": answer_html(body.text)}

    @app.get("/ui/highlight.css")
    async def highlight_css():
        from fastapi.responses import PlainTextResponse

        from codelora.serving.render import highlight_css

        return PlainTextResponse(highlight_css(), media_type="text/css")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.worker = worker
    return app
