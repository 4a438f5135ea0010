"""Continuous batching: every admitted sequence advances one token per decode step, in one forward pass.

A sequence joins at the next step (its prompt is prefilled, its KV-cache rows appended to the
batch) and leaves as soon as it finishes or is cancelled (its rows dropped), so short answers
free their slot for waiting ones instead of idling until the longest answer of a static batch
ends. Each row carries its own positions (left padding does not shift them), decoding settings,
random generator and adapter: with several adapters in one batch, peft's mixed-adapter forward
(`adapter_names`) applies each row's own LoRA weights; the base weights are shared.

Used by evaluation and `ask` directly (`run`) and by the server from its engine thread (`step`).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from codelora.config import GenerateConfig
from codelora.decoding import kv_cache
from codelora.decoding.sampling import next_tokens
from codelora.decoding.text_stream import TextStream

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class Sequence:
    """One prompt to answer, and its progress. `adapter`: a peft adapter name, BASE, or None for
    the model as it is (evaluation's candidates). `on_update(seq, piece)` is called on the
    generating thread with each released piece of text and once more when the sequence ends."""

    prompt: list[int]
    gen: GenerateConfig
    adapter: str | None = None
    seed: int | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    strip: bool = True  # strip the answer's surrounding whitespace (not for raw completions)
    exclusive: bool = False  # its adapter cannot share a forward pass with others (DoRA)
    on_update: Callable | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once ended
    text_stream: TextStream | None = None
    generator: torch.Generator | None = None
    banned: tuple[int, ...] = ()
    cancelled: bool = False
    label: str = ""  # the caller's name for the adapter ("base", a registry name)
    added_at: float = 0.0  # perf_counter() when queued, at the first token, at the end
    first_token_at: float | None = None
    ended_at: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.text_stream.text if self.text_stream else ""

    def cancel(self) -> None:
        """Leave the batch at the next step (safe from any thread)."""
        self.cancelled = True


def start(seq: Sequence, tokenizer, stop_ids: list[int], device: str = "cpu") -> Sequence:
    """Give `seq` its text stream, random generator and banned tokens before its first step."""
    seq.text_stream = TextStream(tokenizer, seq.stop, seq.strip)
    if seq.gen.temperature > 0:
        seq.generator = torch.Generator(device=device)  # multinomial needs one on the logits' device
        seq.generator.manual_seed(seq.seed if seq.seed is not None else torch.seed())
    seq.banned = tuple(stop_ids) if seq.min_new_tokens > 0 else ()
    seq.added_at = time.perf_counter()
    return seq


def advance(seq: Sequence, token: int, stop_ids: list[int]) -> str | None:
    """Append `token` to `seq` and release its text; the reason it ended ("stop", "length"), if it did."""
    seq.tokens.append(token)
    seq.first_token_at = seq.first_token_at or time.perf_counter()
    if seq.banned and len(seq.tokens) >= seq.min_new_tokens:
        seq.banned = ()
    reason = None
    if token in stop_ids and not seq.banned:
        reason = "stop"
    elif len(seq.tokens) >= seq.gen.max_new_tokens:
        reason = "length"
    piece = seq.text_stream.update(seq.tokens[:-1] if reason == "stop" and token in stop_ids else seq.tokens)
    if piece and seq.on_update:
        seq.on_update(seq, piece)
    return reason or ("stop" if seq.text_stream.stopped else None)


def end(seq: Sequence, reason: str) -> None:
    """Mark `seq` ended and release the rest of its text (nothing more for a cancelled one)."""
    seq.ended_at = time.perf_counter()
    seq.finish_reason = reason
    piece = seq.text_stream.finish() if reason not in ("cancelled", "error") else ""
    if seq.on_update:
        seq.on_update(seq, piece)


def left_pad(seqs: list[list[int]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of `seqs` left-padded to one width (a batch's prompts)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _forward_kwargs(model) -> tuple[dict, str]:
    """Extra forward kwargs this model accepts, and the name of its cache argument (transformers
    5.x renames `past_key_values` to `cache`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ({"logits_to_keep": 1} if "logits_to_keep" in params else {}), (
        "cache" if "cache" in params else "past_key_values")


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class Batcher:
    def __init__(self, model, tokenizer, stop_ids: list[int], max_batch: int, device: str = "cpu"):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, list(stop_ids)
        self.max_batch, self.device = max_batch, device
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None  # real tokens in the cache per row (the next position)
        self.row_ops = kv_cache.config_supports_row_ops(model.config)  # else one sequence at a time
        self.peak = 0  # the most rows decoded together so far
        self.ended = 0  # sequences ended so far, for any reason
        self._lock = threading.Lock()
        self._keep_kw, self._cache_arg = _forward_kwargs(model)

    # -- queue ------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> Sequence:
        start(seq, self.tokenizer, self.stop_ids, self.device)
        with self._lock:
            self.waiting.append(seq)
        return seq

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def run(self, seqs: list[Sequence]) -> list[Sequence]:
        """Answer `seqs` (in the order given as they fit) and return them, ended."""
        for s in seqs:
            self.add(s)
        while self.busy:
            self.step()
        return seqs

    # -- one step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled rows, admit waiting sequences, then advance every row by one token."""
        self._drop([s for s in self.running if s.cancelled], "cancelled")
        with self._lock:
            for s in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(s)
                self._end(s, "cancelled")
            admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if any(s not in admitted for s in self.running):  # the new rows already got a token from the prefill
            self._decode()

    def _admit(self) -> list[Sequence]:
        room = (self.max_batch if self.row_ops else 1) - len(self.running)
        taken: list[Sequence] = []
        while self.waiting and len(taken) < room and (self.row_ops or not self.running):
            if not self._fits(self.waiting[0], self.running + taken):
                break  # first come, first served: wait for the batch to drain
            taken.append(self.waiting.popleft())
        return taken

    @staticmethod
    def _fits(seq: Sequence, batch: list[Sequence]) -> bool:
        adapters = {s.adapter for s in batch} | {seq.adapter}
        return len(adapters) == 1 or not any(s.exclusive for s in batch + [seq])

    def _forward(self, rows: list[Sequence], **inputs):
        adapters = {s.adapter for s in rows}
        extra = {}
        if adapters != {None}:
            if len(adapters) == 1 and BASE not in adapters:  # one adapter: plain forward, no per-row routing
                (name,) = adapters
                if self.model.active_adapter != name:
                    self.model.set_adapter(name)
            else:
                extra["adapter_names"] = [s.adapter for s in rows]
        return self.model(**inputs, use_cache=True, **self._keep_kw, **extra)

    def _prefill(self, new: list[Sequence]) -> None:
        enc = left_pad([s.prompt for s in new], self._pad_id, self.device)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # each row counts from 0 at its first real token
        cache = {self._cache_arg: kv_cache.new_cache(self.model.config)} if self.row_ops else {}
        out = self._forward(new, **enc, position_ids=positions, **cache)
        lengths = mask.sum(1)
        if self.running and self.cache is not None:
            self.mask = kv_cache.join(self.cache, self.mask, _cache_of(out), mask)
            self.lengths = torch.cat([self.lengths, lengths])
        else:
            self.cache, self.mask, self.lengths = _cache_of(out), mask, lengths
        self.running += new
        self.peak = max(self.peak, len(self.running))
        self._advance(new, out.logits[:, -1, :])

    def _decode(self) -> None:
        last = torch.tensor([[s.tokens[-1]] for s in self.running], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.running), 1)], dim=1)
        out = self._forward(self.running, input_ids=last, attention_mask=self.mask,
                            position_ids=self.lengths.unsqueeze(1), **{self._cache_arg: self.cache})
        self.cache = _cache_of(out)
        self.lengths = self.lengths + 1
        self._advance(self.running, out.logits[:, -1, :])

    def _advance(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        """Append each row's next token, release its text, and drop the rows that ended."""
        ended = [(seq, reason) for seq, token in zip(rows, next_tokens(logits, rows))
                 if (reason := advance(seq, token, self.stop_ids))]
        for seq, reason in ended:
            self._drop([seq], reason)

    def _drop(self, seqs: list[Sequence], reason: str) -> None:
        if not seqs:
            return
        keep = [i for i, s in enumerate(self.running) if s not in seqs]
        self.running = [self.running[i] for i in keep]
        if not self.running:
            self.cache = self.mask = self.lengths = None
        else:
            self.mask = kv_cache.select(self.cache, self.mask, keep)
            self.lengths = self.lengths[keep]
            self.mask = kv_cache.trim(self.cache, self.mask)
        for s in seqs:
            self._end(s, reason)

    def abort(self, reason: str) -> None:
        """End every sequence, running or waiting, with `reason` (after a failed step)."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        running, self.running = self.running, []
        self.cache = self.mask = self.lengths = None
        for s in running + waiting:
            self._end(s, reason)

    def _end(self, seq: Sequence, reason: str) -> None:
        self.ended += 1
        end(seq, reason)

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]
