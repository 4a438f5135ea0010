"""`codelora serve`: load the base model and the adapter registry, then run the API with uvicorn."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys
import threading

import uvicorn

from codelora.config import API_KEY_ENV, EMBEDDED_MODEL, ModelConfig, ServeConfig, validated
from codelora.errors import CodeloraError
from codelora.models.adapters import base_model_of
from codelora.serving.registry import AdapterRegistry


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_settings(settings: ServeConfig) -> None:
    validated(settings, "--")
    if not is_loopback(settings.host) and not settings.api_key:
        raise CodeloraError(f"--host {settings.host} makes the API reachable from other machines: set an API key "
                            f"with {API_KEY_ENV}=... (or --api-key), or bind 127.0.0.1")


def pick_base(model: str | None, registry) -> ModelConfig:
    """--model, else the base the adapters were trained on (the first one that says), else the embedded model."""
    if model:
        return ModelConfig(name=model)

    for name in registry.names() if registry else []:
        cfg = base_model_of(registry.resolve(name).path)
        if cfg.name:
            return cfg
    return ModelConfig(name=EMBEDDED_MODEL)


def serve(adapters: str | None, settings: ServeConfig, model: str | None = None) -> None:
    """Serve the base model (`model`, else the adapters' base) and the adapter folders in `adapters`."""
    # torch, transformers and fastapi (~3 s) load only once the settings and adapter folders passed their checks
    from codelora.serving.app import create_app
    from codelora.serving.engine import Engine

    if settings.api_key is None:
        settings = dataclasses.replace(settings, api_key=os.environ.get(API_KEY_ENV) or None)
    check_settings(settings)
    registry = AdapterRegistry(adapters) if adapters else None
    logging.basicConfig(level=logging.INFO, format="codelora: %(message)s", stream=sys.stderr)
    log = logging.getLogger("codelora.serve")
    engine = Engine(pick_base(model, registry), registry, settings.device, settings.max_batch, settings.precision)
    log.info("base model %s (%s) on %s, %s (%s)", engine.base_name, engine.source.kind, engine.device,
             engine.precision.name, engine.precision.reason)
    if registry:
        for problem in engine.adapters.load_all() if not settings.lazy else []:
            log.warning("not serving: %s", problem)
        log.info("adapters in %s: %s", registry.root, ", ".join(sorted(engine.adapters.loaded)) or "none loaded")
        usable = set(registry.names())
        skipped = [p.name for p in registry.root.iterdir() if p.name not in usable]
        if skipped:
            log.warning("ignored (not an adapter folder, or a name/location that is refused): %s",
                        ", ".join(sorted(skipped)))
    log.info("prompts are %s", "logged (--log-prompts)" if settings.log_prompts else "not logged")
    app = create_app(engine, settings)
    host = settings.host
    shown = f"[{host}]" if ":" in host else host
    log.info("web page and API on http://%s:%s/ (API docs at /docs)", shown, settings.port)
    config = uvicorn.Config(app, host=host, port=settings.port, log_level="info", access_log=True,
                            timeout_graceful_shutdown=settings.shutdown_grace + 10)  # a backstop: see _Server
    try:
        _Server(config, engine, settings.shutdown_grace).run()
    finally:
        engine.close()


class _Server(uvicorn.Server):
    """uvicorn's server; on Ctrl-C / SIGTERM it also cancels the engine's answers still running
    after the grace period, so their streams end at the next decode step and the connections
    close cleanly (uvicorn's own timeout would kill the tasks mid-response, with tracebacks)."""

    def __init__(self, config: uvicorn.Config, engine, grace: int):
        super().__init__(config)
        self.engine, self.grace = engine, grace

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            timer = threading.Timer(self.grace, self.engine.cancel_all)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)
