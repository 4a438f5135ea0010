"""Admission control: at most `limit` requests are inside the server at once (decoding or waiting
for a slot in the batch); the next one gets 429 at once instead of piling up unboundedly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from codelora.serving.http_errors import ApiError


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.admitted = 0
        self.refused = 0

    @contextmanager
    def place(self) -> Iterator[None]:
        """Hold one place for the `with` block, or 429 at once when all are taken. The place is
        given back when the block ends, however it ends: this is the only place that does."""
        if self.admitted >= self.limit:
            self.refused += 1
            raise ApiError(429, f"server busy: {self.admitted} requests running or queued (limit {self.limit}); "
                                f"retry later")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1
