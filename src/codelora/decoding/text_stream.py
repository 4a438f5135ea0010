"""Generated tokens to text as they arrive: the pieces a client can be sent now, and stop strings.

The whole answer is decoded again at each step (answers are at most a few thousand tokens) and
the new part is released, except what may still change: an unfinished UTF-8 character (decoded
as U+FFFD), trailing whitespace (answers are stripped, unless `strip` is off: raw completions) and a tail
that could be the start of a stop string. The concatenated pieces equal the final text; a stop
string and everything after it is never sent.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), strip: bool = True):
        self.tokenizer, self.strip = tokenizer, strip
        self.stop = tuple(s for s in stop if s)
        self.text = ""  # the answer so far (final once `stopped` or the sequence ends)
        self.sent = 0  # characters of it already released
        self.stopped = False  # a stop string was found; the text ends before it

    def update(self, token_ids: list[int]) -> str:
        """The text that can be released now, after `token_ids` (all tokens of the answer so far)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        text = text.lstrip() if self.strip else text
        cut = self._stop_at(text)
        if cut is not None:
            self.text, self.stopped = self._rstrip(text[:cut]), True
            return self._release(len(self.text))
        self.text = text
        return self._release(self._releasable(text))

    def finish(self) -> str:
        """The rest of the text once the sequence has ended: the final answer is `self.text`, stripped."""
        self.text = self._rstrip(self._rstrip(self.text).removesuffix("\ufffd"))
        return self._release(len(self.text))

    def _rstrip(self, text: str) -> str:
        return text.rstrip() if self.strip else text

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:upto], upto
        return piece

    def _stop_at(self, text: str) -> int | None:
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _releasable(self, text: str) -> int:
        """Where the text that can no longer change ends: before a tail that could start a stop
        string, an unfinished character, and the whitespace before them."""
        end = len(text)
        for s in self.stop:  # the longest tail that starts a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    end = min(end, len(text) - k)
                    break
        kept = text[:end].rstrip("\ufffd")
        return len(self._rstrip(kept))
