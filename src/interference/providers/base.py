"""The provider interface: every backend turns a validated request into the same stream of deltas."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from ..protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = [
    "LOAD_SECONDS_BUCKETS",
    "Delta",
    "Embeddings",
    "LifecycleStats",
    "ModelState",
    "Provider",
    "ProviderStats",
    "TokenUsage",
    "aclose_stream",
]

# Upper bounds of the model load time histogram, in seconds.
LOAD_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one choice; the last delta of a choice carries ``finish_reason`` and usage."""

    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    # OpenAI tool-call deltas ({"index", "id", "type", "function": {"name", "arguments"}}), as streamed.
    tool_calls: tuple[dict[str, Any], ...] | None = None
    # OpenAI logprobs object for this delta's tokens ({"content": [...]}, or the legacy completions shape).
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors of one embeddings request, one row per input in input order, and its token count."""

    vectors: npt.NDArray[np.float32]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """A local engine's load and counters at one moment, for the metrics endpoint."""

    slots_active: int
    slots_total: int
    requests_waiting: int
    requests_finished: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    decode_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelState:
    """What a model card tells about a backend's model: whether it is in memory, and what it costs."""

    status: Literal["loaded", "loading", "unloaded"] = "loaded"
    context_length: int | None = None
    size_mb: float | None = None  # the GGUF's size
    memory_mb: int | None = None  # the estimated resident cost counted against the memory budget


@dataclass(frozen=True, slots=True)
class LifecycleStats:
    """Loads and unloads of a backend that loads its model on demand, for the metrics endpoint."""

    is_loaded: bool
    loads: int
    unloads: int
    evictions: int
    load_seconds_sum: float
    load_seconds_buckets: tuple[int, ...]  # non-cumulative counts per LOAD_SECONDS_BUCKETS bound, then +Inf


class Provider(abc.ABC):
    """A backend that can serve completions for the model ids it was configured with.

    ``chat`` and ``complete`` return async iterators. Validation and admission errors are raised by
    the first ``__anext__`` at the latest, so the caller can await the first delta before it commits
    to a response. Closing the iterator early cancels the work (frees the slot or the connection).
    """

    name: str

    @abc.abstractmethod
    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]: ...

    @abc.abstractmethod
    def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]: ...

    async def embed(self, request: EmbeddingRequest, *, model: str) -> Embeddings:
        """Embed ``request.input``; backends without an embedding model keep this default (a 400)."""
        raise InvalidRequest(f"The model '{request.model}' does not support embeddings.", param="model")

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (threads, connection pools)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release everything ``start`` acquired."""

    def is_healthy(self) -> bool:
        return True

    def stats(self) -> ProviderStats | None:
        """Load and counters of a backend that schedules its own work (a local engine); else None."""
        return None

    def is_ready(self) -> bool:
        """Whether what had to be ready at start-up (a model loading in the background) is ready."""
        return True

    def model_state(self) -> ModelState:
        return ModelState()

    def lifecycle(self) -> LifecycleStats | None:
        """Loads and unloads of a backend that loads on demand; None for the others."""
        return None

    @property
    def can_load(self) -> bool:
        """Whether ``load`` and ``unload`` do anything: a backend whose model comes and goes."""
        return False

    async def load(self) -> None:  # noqa: B027 - optional hook
        """Load the model now; returns when it is loaded."""

    async def unload(self) -> None:  # noqa: B027 - optional hook
        """Unload the model once its requests in flight are done."""


async def aclose_stream(stream: AsyncIterator[Delta]) -> None:
    """Close a delta stream early (frees its slot or upstream connection); a no-op for plain iterators."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
