"""From the engine thread to an HTTP handler: the pieces of one sequence, as they are generated.

The engine calls `on_update` on its own thread; the pieces wait in a deque and the event loop is
woken with `call_soon_threadsafe`, once for all the pieces that arrive before it runs. A handler
either iterates them (`pieces`, for SSE) or waits for the end (`finished`); in both cases a
watcher polls for a disconnect and the sequence is cancelled as soon as the client goes away,
so its slot in the batch is free at the next decode step.
"""

from __future__ import annotations

import asyncio
from collections import deque

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from codelora.decoding.batcher import Sequence
from codelora.serving.engine import Engine, GenerationJob
from codelora.serving.http_errors import REQUEST_ERRORS, from_codelora

POLL_S = 0.25  # how often the watcher checks that the client is still there


class Stream:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.items: deque = deque()  # (piece, done) from the engine thread; deque appends are thread-safe
        self.wake_pending = False  # a wake-up is already on its way: pieces that arrive meanwhile ride along
        self.gone = False  # the client disconnected
        self.seq: Sequence | None = None

    def on_update(self, seq: Sequence, piece: str) -> None:  # engine thread
        self.items.append((piece, seq.done))
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self.ready.set)

    async def start(self, engine: Engine, job: GenerationJob) -> Sequence:
        """Queue the job (loading its adapter on a worker thread if needed); 4xx on bad requests."""
        try:
            self.seq = await run_in_threadpool(engine.submit, job, self.on_update)
        except REQUEST_ERRORS as e:
            raise from_codelora(e) from None
        return self.seq

    async def pieces(self, request: Request):
        """The text as it comes (pieces that arrived together are joined); stops early, cancelling
        the sequence, if the client disconnects."""
        watcher = asyncio.create_task(self._watch(request))
        try:
            while True:
                await self.ready.wait()
                self.ready.clear()
                self.wake_pending = False
                text, done = self._drain()
                if text:
                    yield text
                if done or self.gone:
                    return
        finally:
            watcher.cancel()
            self.cancel()

    def cancel(self) -> None:
        """Cancel the sequence unless it has ended (it leaves the batch at the next step)."""
        if self.seq is not None and not self.seq.done:
            self.seq.cancel()

    def _drain(self) -> tuple[str, bool]:
        text, done = [], False
        while self.items:
            piece, ended = self.items.popleft()
            text.append(piece)
            done = done or ended
        return "".join(text), done

    async def _watch(self, request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(POLL_S)
        self.gone = True
        self.ready.set()

    async def finished(self, request: Request) -> bool:
        """Wait for the end of the sequence; False (and cancelled) if the client left first."""
        async for _ in self.pieces(request):
            pass
        return self.seq.done and self.seq.finish_reason != "cancelled"
