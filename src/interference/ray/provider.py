"""The ingress side: a ``Provider`` whose generation runs on the engine replicas, through a handle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from ..errors import EngineFailure, InterferenceError, ServiceUnavailable
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
)
from ..providers.base import Delta, Embeddings, MessageEvent, Provider

__all__ = ["RayProvider", "replica_error"]

# Seconds a client is told to wait when no engine replica can take its request.
RETRY_AFTER = 5.0
# Seconds a request waits for an engine replica to take it before the client gets a 503.
ASSIGN_TIMEOUT = 10.0
# Replicas a request is handed to when they are lost before answering, and the pause between them
# (the router learns of a dead replica within a moment).
ATTEMPTS = 3
RETRY_PAUSE = 0.5
NO_REPLICA = "No engine replica is up to take this request; retry shortly."

logger = logging.getLogger(__name__)


def replica_error(exc: BaseException) -> InterferenceError:
    """The typed error a replica raised (so the API maps it to its 4xx/429), or a 503/500 of ours."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, InterferenceError):
            return cause
        return EngineFailure(f"The engine replica failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, InterferenceError):
        return exc
    if isinstance(exc, BackPressureError | DeploymentUnavailableError):
        unavailable = ServiceUnavailable("No engine replica can take this request now; retry shortly.")
        unavailable.retry_after = RETRY_AFTER
        return unavailable
    unavailable = ServiceUnavailable(f"The engine replica was lost: {type(exc).__name__}.")
    unavailable.retry_after = RETRY_AFTER
    return unavailable


async def _relay(start: Callable[[], Any]) -> AsyncIterator[Any]:
    """The stream of a replica (``start()`` makes a ``DeploymentResponseGenerator``), its errors typed
    as ours. A replica lost before its first delta (killed, its node gone) hands the request to
    another one, ``ATTEMPTS`` times at most; after a delta was sent the stream ends with the error."""
    for attempt in range(ATTEMPTS):
        stream = start()
        sent = False
        try:
            # Ray Serve's router waits for a replica without end when none is up: give it a bound.
            assigned = asyncio.ensure_future(stream._fetch_future_result_async())
            try:
                await asyncio.wait_for(asyncio.shield(assigned), ASSIGN_TIMEOUT)
            except TimeoutError:
                assigned.cancel()
                unavailable = ServiceUnavailable(
                    "No engine replica is up to take this request; retry shortly."
                )
                unavailable.retry_after = RETRY_AFTER
                raise unavailable from None
            async for item in stream:
                sent = True
                yield item
            return
        except InterferenceError:
            raise
        except Exception as exc:
            if sent or attempt == ATTEMPTS - 1 or not isinstance(exc, RayActorError | ActorUnavailableError):
                raise replica_error(exc) from None
            logger.warning(
                "an engine replica was lost before answering (%s); trying another", type(exc).__name__
            )
        finally:
            stream.cancel()  # a client that left frees the replica's slot
        await asyncio.sleep(RETRY_PAUSE)


async def _answer(response: Any) -> Any:
    """A replica's whole answer (a ``DeploymentResponse``), its errors typed as ours."""
    try:
        return await response
    except Exception as exc:
        raise replica_error(exc) from None


class RayProvider(Provider):
    """Hands each request to an engine replica; deltas stream back through Ray."""

    def __init__(self, handle: DeploymentHandle[Any], *, name: str = "ray") -> None:
        self.name = name
        self._handle = handle
        self._stream: Any = handle.options(stream=True)

    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return _relay(lambda: self._stream.chat.remote(request, model))

    def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return _relay(lambda: self._stream.complete.remote(request, model))

    def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[Delta | MessageEvent]:
        return _relay(lambda: self._stream.messages.remote(request, model))

    async def embed(self, request: EmbeddingRequest, *, model: str) -> Embeddings:
        result: Embeddings = await _answer(self._handle.embed.remote(request, model))
        return result

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        result: int = await _answer(self._handle.count_tokens.remote(request, model))
        return result
