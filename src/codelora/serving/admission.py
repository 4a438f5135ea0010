"""Admission control: at most `limit` requests are inside the server at once (decoding or waiting
for a slot in the batch); the next one gets 429 at once instead of piling up unboundedly."""

from __future__ import annotations

from codelora.serving.errors import ApiError


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.admitted = 0
        self.refused = 0

    def enter(self) -> None:
        """Take one place, or 429. The caller calls `leave()` when the request is over (for a
        stream: after its last chunk), whatever happened."""
        if self.admitted >= self.limit:
            self.refused += 1
            raise ApiError(429, f"server busy: {self.admitted} requests running or queued (limit {self.limit}); "
                                f"retry later")
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

