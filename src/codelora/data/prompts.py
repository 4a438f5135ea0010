"""Turn rows into model inputs: the user turn is the instruction (plus the input when non-empty),
the assistant turn is the output.

With a chat template the tokenizer's own template formats the turns, so the adapter is asked
questions exactly as it was trained; otherwise a plain Instruction/Response template is used.
Only the answer and the end-of-turn token are supervised: prompt positions get label -100.
"""

from __future__ import annotations

from dataclasses import dataclass

from codelora.console import progress
from codelora.errors import ModelError

IGNORE_INDEX = -100
PLAIN_TEMPLATE = "### Instruction:\n{question}\n\n### Response:\n"


def _model_name(tokenizer) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or "this model")


def user_message(row: dict) -> str:
    question = row["instruction"].strip()
    extra = row.get("input", "").strip()
    return f"{question}\n\n{extra}" if extra else question


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


class PromptFormat:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn_id = self._find_end_of_turn()

    def _find_end_of_turn(self) -> int:
        """The token that closes the assistant turn: what the model must learn to emit to stop."""
        if self.uses_chat_template:
            probe = "PROBE_ANSWER"
            prompt = self.prompt_text("q")
            full = self.tok.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
            )
            if full.startswith(prompt) and full[len(prompt):].startswith(probe):
                tail = full[len(prompt) + len(probe):]
                ids = self.tok(tail, add_special_tokens=False)["input_ids"] if tail else []
                if ids:
                    return ids[0]
        if self.tok.eos_token_id is None:
            raise ModelError(f"the tokenizer of {_model_name(self.tok)} has no chat template end-of-turn token and "
                             f"no eos token, so answers could not end; give it an eos_token or pick another model")
        return self.tok.eos_token_id

    @property
    def stop_ids(self) -> list[int]:
        return sorted({self.end_of_turn_id, *( [self.tok.eos_token_id] if self.tok.eos_token_id is not None else [])})

    def prompt_text(self, question: str) -> str:
        if self.uses_chat_template:
            return self.tok.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        return PLAIN_TEMPLATE.format(question=question)

    def prompt_ids(self, question: str) -> list[int]:
        ids = self.tok(self.prompt_text(question), add_special_tokens=False)["input_ids"]
        if not self.uses_chat_template and self.tok.bos_token_id is not None:
            ids = [self.tok.bos_token_id] + ids  # chat templates write their own BOS when they need one
        return ids

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """A whole conversation (role/content dicts, the last one the user's) ready for the reply."""
        if self.uses_chat_template:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        # plain template: earlier turns as Instruction/Response pairs, system text first
        parts = [m["content"] for m in messages if m["role"] == "system"]
        for m in messages:
            if m["role"] == "user":
                parts.append(PLAIN_TEMPLATE.format(question=m["content"]))
            elif m["role"] == "assistant":
                parts.append(m["content"] + "\n\n")
        ids = self.tok("".join(parts), add_special_tokens=False)["input_ids"]
        return ([self.tok.bos_token_id] if self.tok.bos_token_id is not None else []) + ids

    def encode(self, row: dict) -> Example:
        prompt = self.prompt_ids(user_message(row))
        answer = self.tok(row["output"], add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]
        return Example(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + answer)

    def encode_all(self, rows: list[dict], max_length: int) -> tuple[list[Example], list[int]]:
        """Encode rows; returns (examples, positions of rows dropped for exceeding max_length)."""
        return _encode_all(self.encode, rows, max_length)


# --- encoder-decoder (seq2seq) and classification inputs ------------------------------------------


@dataclass
class Seq2SeqExample:
    input_ids: list[int]  # the question, read by the encoder
    labels: list[int]  # the answer + eos, predicted by the decoder (all supervised)

    @property
    def n_supervised(self) -> int:
        return len(self.labels)


@dataclass
class ClassExample:
    input_ids: list[int]
    label: int

    @property
    def labels(self) -> list[int]:  # the same shape of record as the other examples (data fingerprint)
        return [self.label]

    @property
    def n_supervised(self) -> int:
        return 1


def _encode_all(encode, rows: list[dict], max_length: int) -> tuple[list, list[int]]:
    """(examples, positions of rows dropped because a sequence exceeds max_length)."""
    examples, too_long = [], []
    for i, row in enumerate(progress(rows, desc="tokenizing", unit="row")):
        ex = encode(row)
        if max(len(ex.input_ids), len(ex.labels)) > max_length:
            too_long.append(i)
        else:
            examples.append(ex)
    return examples, too_long


class Seq2SeqFormat:
    """T5-style: the encoder reads the question as plain text, the decoder writes the answer.

    No chat template: encoder-decoder code models (CodeT5, T5) are trained on plain text. Both
    sides end with eos, which also stops generation.
    """

    def __init__(self, tokenizer):
        if tokenizer.eos_token_id is None:
            raise ModelError(f"the tokenizer of {_model_name(tokenizer)} has no eos token, which ends both the "
                             f"question and the answer of a seq2seq model; give it an eos_token or pick another model")
        self.tok = tokenizer
        self.stop_ids = [tokenizer.eos_token_id]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def prompt_ids(self, question: str) -> list[int]:
        return self._ids(question)

    def encode(self, row: dict) -> Seq2SeqExample:
        return Seq2SeqExample(self.prompt_ids(user_message(row)), self._ids(row["output"]))

    def encode_all(self, rows: list[dict], max_length: int) -> tuple[list[Seq2SeqExample], list[int]]:
        return _encode_all(self.encode, rows, max_length)


class ClassFormat:
    """A text and its label id; the tokenizer adds its own special tokens ([CLS] ... [SEP] for BERT)."""

    def __init__(self, tokenizer, labels: list[str]):
        self.tok = tokenizer
        self.labels = labels
        self.label_id = {name: i for i, name in enumerate(labels)}

    def encode(self, row: dict) -> ClassExample:
        return ClassExample(self.tok(row["text"])["input_ids"], self.label_id[row["label"]])

    def encode_all(self, rows: list[dict], max_length: int) -> tuple[list[ClassExample], list[int]]:
        return _encode_all(self.encode, rows, max_length)


def format_for(task: str, tokenizer, labels: list[str] | None = None):
    """How rows become model inputs for each model.task."""
    if task == "seq2seq":
        return Seq2SeqFormat(tokenizer)
    if task == "classification":
        return ClassFormat(tokenizer, labels)
    return PromptFormat(tokenizer)
