"""Graceful stop: SIGTERM or Ctrl-C during training finishes the current optimizer step first.

Killing a step half-way would lose it; finishing it (seconds on a CPU) lets the loop write a
checkpoint and exit cleanly. A second signal means "now": it raises KeyboardInterrupt, and the
newest checkpoint already on disk is what a resume starts from.
"""

from __future__ import annotations

import signal
import threading

from codelora.console import say


class GracefulStop:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        say(f"{self.requested} received: finishing this step, then writing a checkpoint "
            f"(send it again to stop at once)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
