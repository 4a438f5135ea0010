"""The HTTP server: four routers around one engine and an explicit admission object.

    openai_api     /v1/models, /v1/chat/completions, /v1/completions (SSE with stream: true)
    codelora_api   /health, /v1/adapters, /v1/generate
    adapter_api    /v1/load_lora_adapter, /v1/unload_lora_adapter
    web            the page at / and its helpers under /ui

Every error is an OpenAI-shaped JSON body with a 4xx status (http_errors.py); the API key, when set,
is required everywhere but the page, its assets, /health and the API's own documentation.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from codelora.config import ServeConfig
from codelora.serving import adapter_api, codelora_api, http_errors, openai_api, web
from codelora.serving.admission import Admission
from codelora.serving.engine import Engine
from codelora.serving.lifecycle import RequestLifecycle

PUBLIC_PATHS = {"/", "/health", "/ui/highlight.css", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


def create_app(engine: Engine, settings: ServeConfig) -> FastAPI:
    app = FastAPI(title="codelora", summary="LoRA adapters for Python code questions", docs_url="/docs",
                  redoc_url=None)
    app.state.codelora = RequestLifecycle(engine, settings, Admission(settings.max_queue))
    http_errors.install(app)
    for module in (openai_api, codelora_api, adapter_api, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(web.STATIC)), name="static")
    if settings.api_key:
        app.middleware("http")(_require_key(settings.api_key))
    app.add_middleware(http_errors.BodyLimit, limit=settings.max_body_bytes)
    return app


def _require_key(key: str):
    async def check(request: Request, call_next):
        path = request.scope["path"]
        if not (path in PUBLIC_PATHS or path.startswith("/static/")):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
                or request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                return http_errors.error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
        return await call_next(request)

    return check
