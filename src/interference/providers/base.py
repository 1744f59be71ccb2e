"""The provider interface: every backend turns a validated request into the same stream of deltas."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from ..protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = ["Delta", "Embeddings", "Provider", "TokenUsage", "aclose_stream"]


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


async def aclose_stream(stream: AsyncIterator[Delta]) -> None:
    """Close a delta stream early (frees its slot or upstream connection); a no-op for plain iterators."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
