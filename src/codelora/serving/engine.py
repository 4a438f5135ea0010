"""One base model in memory, its adapters, and the thread that runs the continuous batcher.

Generation jobs from any thread are turned into batcher Sequences (`submit`) and decoded together by
one engine thread, each row with its own adapter (or the base) in the same forward pass. The
engine thread owns the model: everything that changes it (attaching or deleting an adapter)
is queued to run there between two decode steps (`on_engine_thread`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from codelora.config import GenerateConfig, ModelConfig, ServeConfig
from codelora.data.prompts import PromptFormat
from codelora.decoding.batcher import BASE, Batcher, Sequence
from codelora.errors import CodeloraError
from codelora.models.lora import load_adapter
from codelora.models.precision import precision_for
from codelora.models.sources import load_base, pick_device
from codelora.serving.adapter_set import AdapterSet
from codelora.serving.registry import AdapterRegistry, UnknownAdapterError

log = logging.getLogger("codelora.serve")


class ContextLengthError(CodeloraError):
    """The prompt plus the tokens asked for do not fit the model's context (HTTP 400)."""


@dataclass
class GenerationJob:
    """One answer to generate: prompt token ids, the adapter (None: the base) and decoding; the
    engine turns it into a batcher Sequence and its outcome into a Generation."""

    ids: list[int]
    adapter: str | None = None
    gen: GenerateConfig = field(default_factory=GenerateConfig)
    seed: int | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    strip: bool = True  # False for raw completions: whitespace is part of the continuation


@dataclass
class Generation:
    text: str
    model: str  # "base" or the adapter's name
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": end of turn or a stop string; "length": max_new_tokens reached; "cancelled"
    seconds: float
    token_ids: list[int]


class Engine:
    def __init__(self, model_cfg: ModelConfig, registry: AdapterRegistry | None, device: str = ServeConfig.device,
                 max_batch: int = ServeConfig.max_batch, precision: str = ServeConfig.precision):
        self.device = pick_device(device)
        self.precision = precision_for(precision, model_cfg, self.device)
        self.base, self.tokenizer, self.source = load_base(model_cfg, self.device, dtype=self.precision.dtype)
        self.model = self.base  # a PeftModel once the first adapter is attached
        self.fmt = PromptFormat(self.tokenizer)
        self.context_length = getattr(self.base.config, "max_position_embeddings", None)
        self.batcher = Batcher(self.base, self.tokenizer, self.fmt.stop_ids, max_batch, self.device)
        self.adapters = AdapterSet(registry, self.on_engine_thread, self._attach, self._detach, self.base, self.source)
        self._retired: set[str] = set()  # peft names unloaded, to delete once unused
        self._commands: list[tuple] = []
        self._wake = threading.Condition()
        self._closed = False
        self._cancelling = False  # cancel_all was called: every row is cancelled after each step
        self._thread = threading.Thread(target=self._loop, name="codelora-engine", daemon=True)
        self._thread.start()

    @property
    def base_name(self) -> str:
        return self.source.name

    @property
    def registry(self) -> AdapterRegistry | None:
        return self.adapters.registry

    # -- requests -----------------------------------------------------------------------------
    def question_ids(self, question: str) -> list[int]:
        return self.fmt.prompt_ids(question)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.fmt.chat_prompt_ids(messages)

    def raw_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context_length and prompt_tokens + max_new_tokens > self.context_length:
            room = self.context_length - prompt_tokens
            hint = (f"lower max_new_tokens to {room} or less" if room > 0 else "shorten the prompt")
            raise ContextLengthError(
                f"prompt is {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds the model's "
                f"context of {self.context_length} tokens: {hint}")

    def submit(self, job: GenerationJob, on_update=None) -> Sequence:
        """Queue `job` for the batch; `on_update(seq, piece)` is called on the engine thread with each
        piece of text and once at the end. Loads the adapter first if needed (blocking: call from a
        worker thread). Raises the adapter and context errors before anything is queued."""
        if not job.ids:
            raise ContextLengthError("the prompt is empty after tokenization")
        self.check_fits(len(job.ids), job.gen.max_new_tokens)
        loaded = self.adapters.get(job.adapter) if job.adapter is not None else None
        seq = Sequence(job.ids, job.gen, adapter=None, seed=job.seed, min_new_tokens=job.min_new_tokens,
                       stop=job.stop, strip=job.strip, exclusive=bool(loaded and loaded.exclusive), on_update=on_update,
                       label=job.adapter or "base")
        with self._wake:  # atomic with _delete_retired's in-use check: a queued adapter is never deleted
            if loaded is not None and self.adapters.loaded.get(job.adapter) is not loaded:
                raise UnknownAdapterError(f"adapter {job.adapter!r} was unloaded while this request was starting")
            seq.adapter = loaded.peft_name if loaded else (BASE if self.model is not self.base else None)
            self.batcher.add(seq)
            self._wake.notify()
        return seq

    def generate(self, job: GenerationJob) -> Generation:
        """Answer one job, blocking until it ends (tests, scripts)."""
        done = threading.Event()
        seq = self.submit(job, lambda s, piece: done.set() if s.done else None)
        done.wait()
        return self.result(seq)

    def result(self, seq: Sequence) -> Generation:
        end = seq.ended_at or time.perf_counter()
        # a cancelled sequence may not have been dropped yet: that happens at the engine's next step
        reason = seq.finish_reason or ("cancelled" if seq.cancelled else None)
        return Generation(seq.text, seq.label, len(seq.prompt), len(seq.tokens), reason, end - seq.added_at,
                          list(seq.tokens))

    def counts(self) -> dict:
        return {"running": len(self.batcher.running), "queued": len(self.batcher.waiting),
                "max_batch": self.batcher.max_batch, "peak_batch": self.batcher.peak}

    # -- the engine thread --------------------------------------------------------------------
    def on_engine_thread(self, fn):
        """Run `fn()` on the engine thread between two steps and return its result (or raise)."""
        future: Future = Future()
        with self._wake:
            self._commands.append((fn, future))
            self._wake.notify()
        return future.result()

    def cancel_all(self) -> None:
        """Cancel every running and queued sequence (server shutdown); safe from any thread. Rows
        in the prefill of the step in progress are neither waiting nor running yet: the engine
        thread cancels them once the step is over."""
        with self._wake:
            self._cancelling = True
            self._cancel_rows()
            self._wake.notify()

    def _cancel_rows(self) -> None:
        for seq in self.batcher.running + list(self.batcher.waiting):
            seq.cancel()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._commands or self.batcher.busy or self._closed):
                    self._wake.wait()
                if self._closed:
                    return
                commands, self._commands = self._commands, []
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller's thread
                    future.set_exception(e)
            if self.batcher.busy:
                self._step()
                if self._cancelling:
                    with self._wake:
                        self._cancel_rows()
            self._delete_retired()

    @property
    def completed(self) -> int:
        return self.batcher.ended

    def _step(self) -> None:
        try:
            self.batcher.step()
        except Exception:  # a bug or an environment failure: every sequence ends, the server keeps serving
            log.exception("decode step failed; ending the batch")
            self.batcher.abort("error")

    # -- adapters (engine thread) -------------------------------------------------------------
    def _attach(self, path, peft_name: str) -> None:
        with self._wake:  # submit() reads self.model to name base rows
            wrapped = self.model is self.base
            self.model = load_adapter(self.model, path, adapter_name=peft_name)
            self.model.eval()
            self.batcher.model = self.model
            if wrapped:  # rows queued for "the model as it is" are base rows from now on
                for seq in self.batcher.running + list(self.batcher.waiting):
                    seq.adapter = seq.adapter or BASE

    def _detach(self, peft_name: str) -> None:
        with self._wake:
            self._retired.add(peft_name)
            self._wake.notify()

    def _delete_retired(self) -> None:
        with self._wake:
            in_use = {s.adapter for s in self.batcher.running} | {s.adapter for s in self.batcher.waiting}
            unused = sorted(self._retired - in_use)
            self._retired -= set(unused)
        for name in unused:  # engine thread: no forward pass is running
            self.model.delete_adapter(name)
            log.info("adapter weights %s deleted", name)
