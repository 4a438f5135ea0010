"""Adapters at run time, with vLLM's request bodies (the API key applies like everywhere else):

    POST /v1/load_lora_adapter     {"lora_name": "NAME", "lora_path": "FOLDER inside --adapters"}
    POST /v1/unload_lora_adapter   {"lora_name": "NAME"}

The folder must lie inside the server's adapter directory (the registry's root and name rules).
Loading reads and checks the adapter on a worker thread and attaches it between two decode
steps: requests already streaming keep streaming. Unloading frees the name at once; a folder of
that name in the directory can still be loaded again by a request that names it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from codelora.errors import CodeloraError
from codelora.serving.engine import Engine
from codelora.serving.http_errors import ApiError, from_codelora, read_body
from codelora.serving.lifecycle import engine_of
from codelora.serving.schemas import LoadAdapterRequest, UnloadAdapterRequest

router = APIRouter(tags=["adapters"])


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request, engine: Engine = Depends(engine_of)):
    body: LoadAdapterRequest = await read_body(request, LoadAdapterRequest)
    adapters = engine.adapters
    if adapters.registry is None:
        raise ApiError(400, "this server was started without --adapters DIR: there is no directory to load from",
                       "lora_path")
    try:
        entry = adapters.registry.resolve_path(body.lora_name, body.lora_path)
        loaded = await run_in_threadpool(adapters.load, body.lora_name, entry)
    except CodeloraError as e:
        raise _with_param(from_codelora(e), body) from None
    return {"status": "ok", "message": f"Success: LoRA adapter '{loaded.name}' added successfully.",
            "name": loaded.name, "load_seconds": round(loaded.load_seconds, 3), **loaded.info}


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request, engine: Engine = Depends(engine_of)):
    body: UnloadAdapterRequest = await read_body(request, UnloadAdapterRequest)
    try:
        gone = await run_in_threadpool(engine.adapters.unload, body.lora_name)
    except CodeloraError as e:
        raise _with_param(from_codelora(e), body) from None
    return {"status": "ok", "message": f"Success: LoRA adapter '{gone.name}' removed successfully.",
            "name": gone.name}


def _with_param(e: ApiError, body) -> ApiError:
    e.param = "lora_path" if "lora_path" in e.message else "lora_name"
    return e
