"""From the engine thread to an HTTP handler: the pieces of one sequence, as they are generated.

The engine calls `on_update` on its own thread; the pieces are handed to the event loop with
`call_soon_threadsafe`. A handler either iterates them (`pieces`, for SSE) or waits for the end
(`finished`), and in both cases the sequence is cancelled as soon as the client goes away, so its
slot in the batch is free at the next decode step.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from codelora.models.batcher import Sequence
from codelora.serving.engine import Engine, Request as EngineRequest
from codelora.serving.errors import REQUEST_ERRORS, from_codelora

POLL_S = 0.25  # how often a waiting handler checks that its client is still there


class Stream:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seq: Sequence | None = None

    def on_update(self, seq: Sequence, piece: str) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (piece, seq.done))

    async def start(self, engine: Engine, req: EngineRequest) -> Sequence:
        """Queue the request (loading its adapter on a worker thread if needed); 4xx on bad requests."""
        try:
            self.seq = await run_in_threadpool(engine.submit, req, self.on_update)
        except REQUEST_ERRORS as e:
            raise from_codelora(e) from None
        return self.seq

    async def pieces(self, request: Request):
        """Each piece of text; stops early (cancelling the sequence) if the client disconnects."""
        try:
            while True:
                try:
                    piece, done = await asyncio.wait_for(self.queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if piece:
                    yield piece
                if done:
                    return
        finally:
            if self.seq is not None and not self.seq.done:
                self.seq.cancel()

    async def finished(self, request: Request) -> bool:
        """Wait for the end of the sequence; False (and cancelled) if the client left first."""
        async for _ in self.pieces(request):
            pass
        return self.seq.done and self.seq.finish_reason != "cancelled"
