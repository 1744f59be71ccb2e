"""The engine deployment: one replica holds the local engines that one machine would serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..assembly import build_router
from ..errors import ModelNotFound
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
)
from ..providers.base import Delta, Embeddings, MessageEvent, Provider
from ..settings import Settings

__all__ = ["EngineReplica", "RouteInfo"]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the ingress needs to know of one of a replica's routes to offer it."""

    name: str
    models: tuple[str, ...]  # the names the route's providers know the model by
    aliases: tuple[str, ...]
    kind: str
    is_default: bool


class EngineReplica:
    """Serves deltas for the ingress: the same engines, built by the same code, as ``serve`` alone."""

    def __init__(self, settings: Settings) -> None:
        from ..engine._llama import quiet_llama_logs

        quiet_llama_logs(verbose=settings.log_level == "debug")
        router = build_router(settings)
        self._routes = [
            RouteInfo(
                name=r.name,
                models=tuple(d.model for d in r.deployments),
                aliases=r.aliases,
                kind=r.kind,
                is_default=r.is_default,
            )
            for r in router.routes
        ]
        self._providers: dict[str, Provider] = {
            d.model: d.provider for r in router.routes for d in r.deployments
        }
        self._all = router.providers
        self._started = False
        self._lock = asyncio.Lock()

    async def _provider(self, model: str) -> Provider:
        if not self._started:
            async with self._lock:
                if not self._started:
                    for each in self._all:
                        await each.start()
                    self._started = True
        provider = self._providers.get(model)
        if provider is None:
            raise ModelNotFound(model)
        return provider

    async def routes(self) -> list[RouteInfo]:
        return list(self._routes)

    async def ready(self) -> bool:
        await self._provider(next(iter(self._providers)))
        return all(p.is_ready() for p in self._all)

    async def chat(self, request: ChatCompletionRequest, model: str) -> AsyncIterator[Delta]:
        provider = await self._provider(model)
        async for delta in provider.chat(request, model=model):
            yield delta

    async def complete(self, request: CompletionRequest, model: str) -> AsyncIterator[Delta]:
        provider = await self._provider(model)
        async for delta in provider.complete(request, model=model):
            yield delta

    async def messages(self, request: MessagesRequest, model: str) -> AsyncIterator[Delta | MessageEvent]:
        provider = await self._provider(model)
        async for delta in provider.messages(request, model=model):
            yield delta

    async def embed(self, request: EmbeddingRequest, model: str) -> Embeddings:
        provider = await self._provider(model)
        return await provider.embed(request, model=model)

    async def count_tokens(self, request: CountTokensRequest, model: str) -> int:
        provider = await self._provider(model)
        return await provider.count_tokens(request, model=model)

    async def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down
        for provider in self._all:
            await provider.aclose()
