"""Every failure a client can cause becomes a 4xx with an OpenAI-shaped body, never a 5xx:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

`read_body` parses the JSON (malformed, not UTF-8 or nested deeper than MAX_DEPTH -> 400) and
validates it against a pydantic model (-> 422 naming the field); `BodyLimit` refuses bodies
over the size limit (413); `install` maps codelora's own errors to their statuses.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codelora.serving.adapter_set import AdapterConflictError, AdapterLoadError
from codelora.serving.engine import ContextLengthError
from codelora.serving.registry import AdapterNameError, UnknownAdapterError

log = logging.getLogger("codelora.serve")
MAX_DEPTH = 32  # request bodies are flat; deeper nesting is an attack or a bug
KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 409: "conflict_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": KINDS.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def from_codelora(e: Exception) -> ApiError:
    """The HTTP status of one of codelora's request errors."""
    if isinstance(e, (AdapterNameError, AdapterConflictError)):
        return ApiError(400, str(e), "model")
    if isinstance(e, UnknownAdapterError):
        return ApiError(404, str(e), "model", "model_not_found")
    if isinstance(e, AdapterLoadError):
        return ApiError(409, str(e), "model")
    if isinstance(e, ContextLengthError):
        return ApiError(400, str(e), "messages", "context_length_exceeded")
    raise e


REQUEST_ERRORS = (AdapterNameError, AdapterConflictError, UnknownAdapterError, AdapterLoadError, ContextLengthError)


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


async def read_body(request: Request, model: type[BaseModel], refuse: dict | None = None):
    """The JSON body as `model`; any content type is read as JSON (curl's default form type too).
    `refuse` maps fields this server does not implement to a test of the harmless values."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON body")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"the JSON body is nested too deeply (limit {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON in the request body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise ApiError(400, f"the JSON body is nested too deeply (limit {MAX_DEPTH} levels)")
    for field, harmless in (refuse or {}).items():
        if field in data and not harmless(data[field]):
            raise ApiError(422, f"{field}: not supported by this server (got {json.dumps(data[field])[:60]}); "
                                f"leave it out", field)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, *_describe(e.errors())) from None


def _describe(problems: list[dict]) -> tuple[str, str]:
    """('field: what is wrong' for the first problem (pydantic's text), and how many more; the field)."""
    first = problems[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg')}{more}", where


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


async def _send_error(send, status: int, message: str):
    await error_response(status, message)({"type": "http"}, None, send)


def install(app: FastAPI) -> None:
    """Exception handlers: ApiError and codelora's request errors as their 4xx, FastAPI's own
    validation and routing errors in the same shape, and a bug as a logged one-line 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return error_response(422, *_describe(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        if isinstance(e, REQUEST_ERRORS):
            e = from_codelora(e)
            return error_response(e.status, e.message, e.param, e.code)
        log.exception("request failed")
        return error_response(500, f"internal error: {type(e).__name__}")
