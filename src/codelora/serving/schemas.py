"""Request bodies. Unknown fields from OpenAI clients (user, metadata, ...) are ignored, but a
field that would change the answer and is not implemented here is refused with 422 (the
REFUSED_* tables), never silently dropped. Defaults come from GenerateConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from codelora.config import GenerateConfig

DEFAULTS = GenerateConfig()
SEED = Field(None, ge=-(2**63), le=2**64 - 1, description="seed for sampling (temperature > 0)")
TEMPERATURE = Field(DEFAULTS.temperature, ge=0.0, le=2.0, allow_inf_nan=False, description="0: greedy")
TOP_P = Field(DEFAULTS.top_p, gt=0.0, le=1.0, allow_inf_nan=False)
STOP = Field(None, description="a string or up to 8 strings; the answer ends before the first one")


def _absent_or(*harmless):
    return lambda v: v is None or v in harmless


def _empty(v) -> bool:
    return v is None or v == [] or v == {}


_COMMON_REFUSED = {
    "n": _absent_or(1),
    "logit_bias": _empty,
    "presence_penalty": _absent_or(0, 0.0),
    "frequency_penalty": _absent_or(0, 0.0),
    "best_of": _absent_or(1),
}
REFUSED_CHAT = _COMMON_REFUSED | {
    "logprobs": _absent_or(False),
    "top_logprobs": _absent_or(0),
    "tools": _empty,
    "functions": _empty,
    "tool_choice": _absent_or("none"),
    "function_call": _absent_or("none"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _empty,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _empty,
    "reasoning_effort": _absent_or(),
    "web_search_options": _empty,
}
REFUSED_COMPLETION = _COMMON_REFUSED | {
    "logprobs": _absent_or(0),
    "echo": _absent_or(False),
    "suffix": lambda v: v is None or v == "",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(OpenAIBody):
    include_usage: bool = False


class Sampling(OpenAIBody):
    model: str = Field(min_length=1, description="the base model's name, 'base', or an adapter's name")
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: generate at least this many tokens "
                                                 "(fixed-length benchmarks)")
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    seed: int | None = SEED
    stop: str | list[str] | None = STOP
    stream: bool = False
    stream_options: StreamOptions | None = None


class TextPart(OpenAIBody):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="raw text to continue (no chat template)")


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, description="the question; the model's chat template is applied")
    adapter: str | None = Field(None, description="an adapter name from /v1/adapters; omitted: the base model")
    max_new_tokens: int = Field(DEFAULTS.max_new_tokens, ge=1)
    temperature: float = Field(DEFAULTS.temperature, ge=0.0, allow_inf_nan=False, description="0: greedy")
    top_p: float = TOP_P
    seed: int | None = SEED
    stop: str | list[str] | None = STOP
    min_new_tokens: int = Field(0, ge=0, description="generate at least this many tokens (fixed-length benchmarks)")


class LoadAdapterRequest(OpenAIBody):
    lora_name: str = Field(description="the name requests will use")
    lora_path: str = Field(description="the adapter folder, inside the server's --adapters directory")


class UnloadAdapterRequest(OpenAIBody):
    lora_name: str
    lora_int_id: int | None = None  # vLLM sends it; names are enough here


class RenderRequest(Strict):
    text: str
