"""A GGUF file run by llama.cpp (through llama-cpp-python), usable wherever codelora generates.

`codelora eval --gguf`, `ask --gguf` and the export's parity check use it. The tokenizer is the
one stored in the file, read by transformers (`gguf_file=`), so prompts are built by the same
`PromptFormat` as for the PyTorch model, and the token ids fed to llama.cpp are exactly those the
PyTorch model would see. Decoding reuses the batcher's per-sequence steps (greedy, or seeded
temperature / top-p sampling; stop tokens and stop strings), one sequence at a time: llama.cpp
is fastest single-stream on a CPU, which is what this is for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from codelora.decoding.batcher import advance, end, start
from codelora.decoding.sampling import next_tokens
from codelora.errors import ModelError

LLAMA_CPP_INSTALL = "make install-gguf (builds llama-cpp-python; see README, \"GGUF export\")"


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"running GGUF files needs the optional package llama-cpp-python; install it with: "
                         f"{LLAMA_CPP_INSTALL}") from None
    return llama_cpp


def check_gguf_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{p} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return p


def gguf_tokenizer(path: Path):
    """The tokenizer stored in the GGUF file, as a transformers tokenizer."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # an architecture or tokenizer transformers cannot read from GGUF
        raise ModelError(f"could not read the tokenizer of {path}: {type(e).__name__}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def trained_context(path: Path) -> int | None:
    """The context length stored in a GGUF file's metadata (`<architecture>.context_length`), if any."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    key = f"{arch}.context_length"
    return int(fields[key].contents()) if arch and key in fields else None


def context_for(longest: int, path: str | Path) -> int:
    """A llama.cpp context (a multiple of 256, at most the file's own context length) for
    sequences of up to `longest` tokens; refused before any memory is reserved when they cannot fit."""
    path = check_gguf_file(path)
    limit = trained_context(path)
    if limit and longest > limit:
        raise ModelError(f"{longest} tokens (the prompt plus max_new_tokens) exceed the context length {limit} of "
                         f"{path.name}; lower --max-new-tokens")
    n = -(-(longest + 16) // 256) * 256
    return min(n, limit) if limit else n


class GgufModel:
    """One llama.cpp context on a GGUF file (optionally with a GGUF LoRA applied)."""

    def __init__(self, path: str | Path, n_ctx: int = 2048, threads: int | None = None, lora: str | Path | None = None,
                 all_logits: bool = False, tokenizer=None):
        llama_cpp = import_llama_cpp()
        self.path = check_gguf_file(path)
        if lora is not None:
            check_gguf_file(lora)
        self.tokenizer = tokenizer if tokenizer is not None else gguf_tokenizer(self.path)
        self.config = None  # not a transformers model: generate_answers dispatches on this class
        self.all_logits = all_logits
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                                       n_threads_batch=threads or os.cpu_count(), logits_all=all_logits,
                                       lora_path=str(lora) if lora else None, verbose=False)
        except Exception as e:  # llama.cpp reports only that loading failed; its log went to stderr
            raise ModelError(f"llama.cpp could not load {self.path}{' with ' + str(lora) if lora else ''}: {e}") from None
        self.n_ctx = n_ctx
        if tokenizer is not None:
            self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        """The given tokenizer must split text as the file's own does (same model family)."""
        text = "def add(a, b):\n    return a + b  # çà va? 12345\n<|im_end|>"
        mine = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        if mine != theirs or self.vocab_size != len(self.tokenizer):
            raise ModelError(f"{self.path} does not use this model's tokenizer (vocabulary {self.vocab_size} vs "
                             f"{len(self.tokenizer)}); was it exported from another model?")

    @property
    def vocab_size(self) -> int:
        return self.llm.n_vocab()

    def eval(self) -> "GgufModel":  # the PyTorch models' call, so evaluation code treats both alike
        return self

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise ModelError(f"{n} tokens do not fit the llama.cpp context of {self.n_ctx} for {self.path.name}")

    def logits(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), vocab] float32: row i is the next-token logits after ids[:i+1] (teacher-forced)."""
        if not self.all_logits:
            raise ModelError("GgufModel(all_logits=True) is needed for per-position logits")
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[:len(ids)], dtype=np.float32))

    def last_logits(self) -> torch.Tensor:
        llama_cpp = import_llama_cpp()
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy())

    def loss_sum(self, input_ids: list[int], labels: list[int], ignore_index: int = -100) -> tuple[float, int]:
        """Summed cross-entropy over the supervised positions of one example, and their count."""
        logits = self.logits(input_ids)[:-1].double()
        target = torch.tensor(labels[1:])
        keep = target != ignore_index
        if not keep.any():
            return 0.0, 0
        logp = torch.log_softmax(logits[keep], -1)
        return float(-logp.gather(1, target[keep].unsqueeze(1)).sum()), int(keep.sum())

    def validation_loss(self, examples) -> float:
        """Token-weighted mean loss over the supervised tokens of `examples` (models/loss.py's, in llama.cpp)."""
        total, count = 0.0, 0
        for e in examples:
            s, n = self.loss_sum(e.input_ids, e.labels)
            total, count = total + s, count + n
        return total / max(count, 1)

    def run(self, seqs: list, stop_ids: list[int]) -> list:
        """Answer each Sequence (decoding.batcher) in turn; returns them, ended."""
        for seq in seqs:
            start(seq, self.tokenizer, stop_ids)
            self._check_length(len(seq.prompt) + seq.gen.max_new_tokens)
            self.llm.reset()
            self.llm.eval(seq.prompt)
            while True:
                if seq.cancelled:
                    end(seq, "cancelled")
                    break
                token = next_tokens(self.last_logits().unsqueeze(0), [seq])[0]
                reason = advance(seq, token, stop_ids)
                if reason:
                    end(seq, reason)
                    break
                self.llm.eval([token])
        return seqs

    def close(self) -> None:
        self.llm.close()
