"""What every route needs: the engine, the server's settings and its admission control."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request

from codelora.config import ServeConfig
from codelora.serving.admission import Admission
from codelora.serving.engine import Engine, Generation, Request as EngineRequest
from codelora.serving.errors import ApiError
from codelora.serving.streams import Stream

log = logging.getLogger("codelora.serve")


def stop_strings(value: str | list[str] | None, most: int) -> tuple[str, ...]:
    """A request's `stop` as a tuple; 422 for more than `most` (serve's max_stops) or an empty string."""
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    if len(stops) > most or any(not s for s in stops):
        raise ApiError(422, f"stop: at most {most} non-empty strings", "stop")
    return stops


@dataclass
class ServerState:
    engine: Engine
    settings: ServeConfig
    admission: Admission

    def check_lengths(self, max_new: int, min_new: int, max_field: str, min_field: str) -> None:
        if max_new > self.settings.max_new_tokens_limit:
            raise ApiError(422, f"{max_field}: {max_new} is above this server's limit of "
                                f"{self.settings.max_new_tokens_limit}", max_field)
        if min_new > max_new:
            raise ApiError(422, f"{min_field}: {min_new} is above {max_field} {max_new}", min_field)

    async def start(self, req: EngineRequest) -> Stream:
        """Admit the request (or 429) and queue it; the caller ends with `finish`, or, for a
        stream, calls `admission.leave()` after the last chunk."""
        self.admission.enter()
        try:
            stream = Stream()
            await stream.start(self.engine, req)
        except BaseException:
            self.admission.leave()
            raise
        return stream

    async def finish(self, request, stream: Stream, kind: str, prompt: str, request_id: str) -> Generation | None:
        """Wait for a non-streamed answer and log it; None when the client left first (its
        sequence is cancelled)."""
        try:
            finished = await stream.finished(request)
        finally:
            self.admission.leave()
        g = self.engine.result(stream.seq)
        self.log_request(kind, g, prompt, request_id)
        if not finished:
            return None
        if g.finish_reason == "error":
            raise ApiError(500, "generation failed; see the server log")
        return g

    def log_request(self, kind: str, g: Generation, prompt: str, request_id: str) -> None:
        extra = f" prompt={prompt!r} answer={g.text!r}" if self.settings.log_prompts else ""
        log.info("%s %s model=%s prompt_tokens=%d completion_tokens=%d finish=%s %.2fs%s", request_id, kind, g.model,
                 g.prompt_tokens, g.completion_tokens, g.finish_reason, g.seconds, extra)


def server_state(request: Request) -> ServerState:
    return request.app.state.codelora
