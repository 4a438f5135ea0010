"""The web page (static/): a small chat that streams answers from /v1/chat/completions, and the
helpers it calls to show an answer with its code highlighted (answers are escaped server-side)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from codelora.serving.http_errors import read_body
from codelora.serving.render import answer_html, highlight_css
from codelora.serving.schemas import RenderRequest

router = APIRouter(tags=["web page"])
STATIC = resources.files("codelora.serving") / "static"


@router.get("/", response_class=HTMLResponse)
async def page():
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.post("/ui/render")
async def render(request: Request):
    body: RenderRequest = await read_body(request, RenderRequest)
    return {"html": answer_html(body.text)}


@router.get("/ui/highlight.css")
async def css():
    return PlainTextResponse(highlight_css(), media_type="text/css")
