"""Server limits and options (the defaults of `codelora serve`); no heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass

API_KEY_ENV = "CODELORA_API_KEY"


@dataclass
class ServerSettings:
    max_queue: int = 8  # requests admitted at once (1 running + the rest waiting); more get 429
    max_new_tokens_limit: int = 1024  # largest max_new_tokens a request may ask for
    max_body_bytes: int = 65536  # larger request bodies get 413
    api_key: str | None = None  # when set, all but the page, /health and docs need "Authorization: Bearer KEY"
    log_prompts: bool = False  # prompts and answers stay out of the log unless asked for
