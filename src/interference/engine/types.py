"""Values that cross the engine's boundary: what a request asks for and what comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["EngineOutput", "EngineRequest", "FinishReason", "SamplingParams", "TokenLogprob"]


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-sequence sampling; ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """A tokenized prompt and how to continue it."""

    request_id: str
    prompt: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF the output must match (root rule "root")
    top_logprobs: int | None = None  # None: no logprobs; else how many alternatives per token (0-20)
    # Choices of one request (n > 1) share it and their prompt: the scheduler prefills the prompt once
    # and copies its KV to the others.
    group: str | None = None
    tenant: str = ""  # whose request it is: the waiting queue takes tenants in turn (opaque here)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's log-probability and the most likely alternatives at that position."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(slots=True)
class EngineOutput:
    """New text for one request since its previous output; the last one carries the finish."""

    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None  # the stop string that ended generation, if one did
