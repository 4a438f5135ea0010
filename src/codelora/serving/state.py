"""What every route needs: the engine, the server's settings and its admission control."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request

from codelora.config import ServeConfig
from codelora.serving.admission import Admission
from codelora.serving.engine import Engine, Generation

log = logging.getLogger("codelora.serve")


@dataclass
class ServerState:
    engine: Engine
    settings: ServeConfig
    admission: Admission

    def log_request(self, kind: str, g: Generation, prompt: str, request_id: str) -> None:
        extra = f" prompt={prompt!r} answer={g.text!r}" if self.settings.log_prompts else ""
        log.info("%s %s model=%s prompt_tokens=%d completion_tokens=%d finish=%s %.2fs%s", request_id, kind, g.model,
                 g.prompt_tokens, g.completion_tokens, g.finish_reason, g.seconds, extra)


def server_state(request: Request) -> ServerState:
    return request.app.state.codelora
