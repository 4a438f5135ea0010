"""A request's life in the server: checked, admitted, queued, answered, logged, let go.

    async with lifecycle.admit(job, "chat", prompt, request_id) as flight:
        g = await flight.answer(request)

Entering the block takes one of the server's places (429 when all are taken) and queues the job
in the engine (4xx for an unknown adapter or a prompt that does not fit). Leaving it, however
the request ends (answered, failed, the client gone, the last chunk of a stream), cancels the
sequence if it still runs, logs the request and gives the place back: once, and only there.
A streamed answer holds the block inside its event generator (openai_api._sse), so the block
lasts as long as the stream does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request

from codelora.config import ServeConfig
from codelora.serving.admission import Admission
from codelora.serving.engine import Engine, Generation, GenerationJob
from codelora.serving.http_errors import ApiError
from codelora.serving.streams import Stream

log = logging.getLogger("codelora.serve")


def stop_strings(value: str | list[str] | None, most: int) -> tuple[str, ...]:
    """A request's `stop` as a tuple; 422 for more than `most` (serve's max_stops) or an empty string."""
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    if len(stops) > most or any(not s for s in stops):
        raise ApiError(422, f"stop: at most {most} non-empty strings", "stop")
    return stops


class InFlight:
    """One admitted request whose job is in the engine: its text as it comes, and its outcome."""

    def __init__(self, engine: Engine, stream: Stream):
        self.engine, self.stream = engine, stream
        self.generation: Generation | None = None  # the outcome, once read

    def pieces(self, request: Request) -> AsyncIterator[str]:
        """The text as it is generated; ends early (the sequence cancelled) if the client leaves."""
        return self.stream.pieces(request)

    def result(self) -> Generation:
        self.generation = self.engine.result(self.stream.seq)
        return self.generation

    async def answer(self, request: Request) -> Generation | None:
        """The whole answer; None when the client left first (its sequence is cancelled); 500 when
        generation failed."""
        finished = await self.stream.finished(request)
        g = self.result()
        if not finished:
            return None
        if g.finish_reason == "error":
            raise ApiError(500, "generation failed; see the server log")
        return g


@dataclass
class RequestLifecycle:
    """The server's engine, settings and admission: what takes a request from its checks to its
    log line. Routes reach it through `request_lifecycle`."""

    engine: Engine
    settings: ServeConfig
    admission: Admission

    def check_lengths(self, max_new: int, min_new: int, max_field: str, min_field: str) -> None:
        if max_new > self.settings.max_new_tokens_limit:
            raise ApiError(422, f"{max_field}: {max_new} is above this server's limit of "
                                f"{self.settings.max_new_tokens_limit}", max_field)
        if min_new > max_new:
            raise ApiError(422, f"{min_field}: {min_new} is above {max_field} {max_new}", min_field)

    @asynccontextmanager
    async def admit(self, job: GenerationJob, kind: str, prompt: str, request_id: str) -> AsyncIterator[InFlight]:
        """Admit `job` (429 when full) and queue it (4xx on a bad request) for the block; see the
        module's docstring. `kind`, `prompt` and `request_id` are what the log line says."""
        with self.admission.place():
            flight = InFlight(self.engine, Stream())
            await flight.stream.start(self.engine, job)
            try:
                yield flight
            finally:
                flight.stream.cancel()
                self._log(kind, flight.generation or flight.result(), prompt, request_id)

    def _log(self, kind: str, g: Generation, prompt: str, request_id: str) -> None:
        extra = f" prompt={prompt!r} answer={g.text!r}" if self.settings.log_prompts else ""
        log.info("%s %s model=%s prompt_tokens=%d completion_tokens=%d finish=%s %.2fs%s", request_id, kind, g.model,
                 g.prompt_tokens, g.completion_tokens, g.finish_reason, g.seconds, extra)


def request_lifecycle(request: Request) -> RequestLifecycle:
    return request.app.state.codelora


def engine_of(request: Request) -> Engine:
    return request.app.state.codelora.engine
