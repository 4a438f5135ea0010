"""codelora's own API: liveness and load, the adapter registry, and a plain question endpoint.

    GET  /health        base model, device, running / queued sequences, admission (no key needed)
    GET  /v1/adapters   the registry's adapters and the loaded ones (with r, targets, size, errors)
    POST /v1/generate   {prompt, adapter?, max_new_tokens?, temperature?, top_p?, seed?, stop?}
"""

from __future__ import annotations

import dataclasses
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from codelora.config import GenerateConfig
from codelora.serving.engine import Engine, GenerationJob
from codelora.serving.http_errors import read_body
from codelora.serving.lifecycle import RequestLifecycle, engine_of, request_lifecycle, stop_strings
from codelora.serving.schemas import DEFAULTS, GenerateRequest

router = APIRouter(tags=["codelora"])


@router.get("/health")
async def health(lifecycle: RequestLifecycle = Depends(request_lifecycle)):
    engine, admission, settings = lifecycle.engine, lifecycle.admission, lifecycle.settings
    counts = engine.counts()
    return {"status": "ok", "base_model": engine.base_name, "device": engine.device,
            "context_length": engine.context_length, "adapters_loaded": sorted(engine.adapters.loaded),
            "running": counts["running"], "queued": counts["queued"],
            "queue": {"admitted": admission.admitted, "limit": admission.limit, "refused": admission.refused,
                      "max_batch": counts["max_batch"], "peak_batch": counts["peak_batch"]},
            "completed": engine.completed, "auth_required": bool(settings.api_key),
            "max_new_tokens_limit": settings.max_new_tokens_limit, "defaults": dataclasses.asdict(DEFAULTS)}


@router.get("/v1/adapters")
async def adapters(engine: Engine = Depends(engine_of)):
    loaded, failed = engine.adapters.loaded, engine.adapters.failed
    items = []
    for name in engine.adapters.names():
        item = {"name": name, "loaded": name in loaded}
        if name in loaded:
            item |= loaded[name].info | {"load_seconds": round(loaded[name].load_seconds, 3)}
        if name in failed:
            item["error"] = failed[name]
        items.append(item)
    return {"base_model": engine.base_name, "adapters": items}


@router.post("/v1/generate")
async def generate(request: Request, lifecycle: RequestLifecycle = Depends(request_lifecycle)):
    body: GenerateRequest = await read_body(request, GenerateRequest)
    lifecycle.check_lengths(body.max_new_tokens, body.min_new_tokens, "max_new_tokens", "min_new_tokens")
    job = GenerationJob(lifecycle.engine.question_ids(body.prompt), body.adapter,
                        GenerateConfig(body.max_new_tokens, body.temperature, body.top_p), body.seed,
                        body.min_new_tokens, stop_strings(body.stop, lifecycle.settings.max_stops))
    request_id = uuid.uuid4().hex[:12]
    async with lifecycle.admit(job, "generate", body.prompt, request_id) as flight:
        g = await flight.answer(request)
    if g is None:
        return Response(status_code=204)  # the client is gone
    return {"id": request_id, "text": g.text, "model": g.model, "base_model": lifecycle.engine.base_name,
            "finish_reason": g.finish_reason, "seconds": round(g.seconds, 3),
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
            "tokens_per_s": round(g.completion_tokens / g.seconds, 2) if g.seconds > 0 else None}
