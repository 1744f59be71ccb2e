"""The provider interface: every backend turns a validated request into the same stream of deltas."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from ..errors import InvalidRequest
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ParamError,
)
from ..protocol.anthropic_openai import chat_request, validated_chat_request

__all__ = [
    "LOAD_SECONDS_BUCKETS",
    "Delta",
    "Embeddings",
    "LifecycleStats",
    "MessageEvent",
    "ModelState",
    "Provider",
    "ProviderStats",
    "TokenUsage",
    "aclose_stream",
    "chat_body_from_messages",
    "chat_from_messages",
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


@dataclass(slots=True)
class Delta:
    """New output of one choice; the last delta of a choice carries ``finish_reason`` and usage.

    A choice's first delta may carry usage early too (prompt and cached tokens, no completion
    tokens): Anthropic streams report the input's size before the output.

    A value: nothing changes a delta once it is made (``dataclasses.replace`` makes a changed copy).
    It is not frozen only because a frozen dataclass takes three times as long to make (1.2 against
    0.4 us), and a stream makes one a token.
    """

    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    # OpenAI tool-call deltas ({"index", "id", "type", "function": {"name", "arguments"}}), as streamed.
    tool_calls: tuple[dict[str, Any], ...] | None = None
    # OpenAI logprobs object for this delta's tokens ({"content": [...]}, or the legacy completions shape).
    logprobs: dict[str, Any] | None = None
    # The stop string that ended this choice (finish_reason "stop"), when the backend reports it.
    stop_sequence: str | None = None
    # The model's reasoning text (a thinking template's block, or an upstream's ``reasoning_content``),
    # streamed before the answer; never part of ``text``.
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One event of a native upstream, relayed untranslated: an Anthropic Messages event (or, named
    ``message``, a whole message), or a Responses event (or, named ``response``, a whole response)."""

    name: str
    data: dict[str, Any]


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
    # The host-RAM prompt cache: hits, misses and what moved between the slots and host memory.
    cache_hits: int = 0
    cache_misses: int = 0
    cache_restored_tokens: int = 0
    cache_saves: int = 0
    cache_evictions: int = 0
    cache_released_slots: int = 0
    shared_prompt_tokens: int = 0
    cache_bytes: int = 0
    cache_entries: int = 0
    cache_seconds: float = 0.0
    cache_pause_max_seconds: float = 0.0
    # The prompt cache's disk tier (--cache-disk): hits (counted in cache_hits too), writes, what it holds.
    cache_disk_hits: int = 0
    cache_disk_writes: int = 0
    cache_disk_bytes: int = 0
    cache_disk_entries: int = 0


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

    def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[Delta | MessageEvent]:
        """Anthropic's Messages API, translated to chat; native backends yield ``MessageEvent``s."""
        return self.chat(chat_from_messages(request), model=model)

    @property
    def serves_responses(self) -> bool:
        """Whether ``responses`` forwards /v1/responses natively (an upstream that says it serves it)."""
        return False

    def responses(self, body: dict[str, Any], *, model: str, stream: bool) -> AsyncIterator[MessageEvent]:
        """A Responses request body as sent (``model`` replaced), answered untranslated.

        Only backends whose ``serves_responses`` is true are asked; the others serve /v1/responses
        through ``chat``, translated by the serving layer.
        """
        raise InvalidRequest(f"The model '{body.get('model')}' does not serve /v1/responses natively.")

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        """The prompt's size in tokens, tools and system included, as ``messages`` would count it."""
        raise InvalidRequest(
            f"The model '{request.model}' cannot count tokens: its backend has no tokenizer endpoint.",
            param="model",
        )

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


async def aclose_stream(stream: AsyncIterator[Any]) -> None:
    """Close a delta stream early (frees its slot or upstream connection); a no-op for plain iterators."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _refused(exc: ParamError) -> InvalidRequest:
    return InvalidRequest(str(exc), param=exc.param)


def chat_from_messages(request: CountTokensRequest) -> ChatCompletionRequest:
    """A Messages request as the chat request that OpenAI-shaped backends serve; a 400 if it cannot be."""
    try:
        return validated_chat_request(request)
    except ParamError as exc:
        raise _refused(exc) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ParamError):
            raise _refused(cause) from None
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise InvalidRequest(
            f"This request cannot be served by this model ({where}: {err.get('msg')})."
        ) from None


def chat_body_from_messages(request: MessagesRequest) -> dict[str, Any]:
    """A Messages request as a chat body, not validated again as a chat request: for an upstream,
    which answers its own 4xx for what it refuses (validating an agent's 118 KB request again cost
    about 70 us). A 400 if it cannot be translated."""
    try:
        return chat_request(request)
    except ParamError as exc:
        raise _refused(exc) from None
