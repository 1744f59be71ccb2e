"""Model names and aliases to deployments; load balancing and failover across them.

A request names a public model (or an alias). Its route lists deployments (a provider plus the
model name that provider knows). The router orders them by strategy, healthy ones first, and opens
the stream on the first that answers:

- a retryable ``UpstreamError`` before the first delta moves on to the next deployment and puts the
  failed one in cooldown (a circuit breaker that closes by itself when the cooldown ends, or at once
  when a last-resort attempt succeeds). Retryable: ``UpstreamConnectError`` (refused, DNS),
  ``UpstreamTimeout`` (no answer, or a drip slower than the deployment's timeout),
  ``UpstreamProtocolError`` (garbage, invalid SSE, a reset, a connection closed after the request was
  written), ``UpstreamAuthError`` (401/403: this deployment's key is bad, not the request), and
  ``UpstreamStatusError`` 429 or 5xx (the last one tried reaches the client with its status and
  ``Retry-After`` when every deployment fails);
- ``Overloaded`` (a local engine's full queue) moves on without cooldown: the engine is healthy;
- any other error is the request's fault and is raised as is, before any byte is sent;
- a failure after the first delta cannot be retried (the client has output): it is raised to the
  serving layer, which ends the stream with an error event, and the deployment cools down.

Deployments in cooldown are tried last, soonest-to-recover first, so a request still succeeds when
every deployment believed healthy fails but one believed down has come back.

Each deployment gets a request at most once, and the transport never sends it again on its own
(``providers/http1.py``). Failing over after the request was written (a timeout, a 5xx, a connection
that broke before any response) may leave work, and a bill, at the failed deployment: the price of
answering the client, which has received nothing yet, paid at most once per deployment.

Every entry point shares these rules: streams (chat, completions, Anthropic messages, native
Responses among the deployments that serve /v1/responses) through
``_open``, single calls (embeddings, count_tokens) through ``_call``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import InterferenceError, InvalidRequest, ModelNotFound, Overloaded, UpstreamError
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MemoryReport,
    MessagesRequest,
    ModelCard,
)
from .providers.base import Delta, Embeddings, MessageEvent, Provider, aclose_stream

__all__ = ["Deployment", "Health", "Route", "Router"]

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Health(enum.Enum):
    UP = "up"
    COOLING_DOWN = "cooling_down"


@dataclass(eq=False, slots=True)
class Deployment:
    provider: Provider
    model: str  # the name this provider knows the model by
    weight: float = 1.0
    outstanding: int = 0
    health: Health = Health.UP
    cooldown_until: float = 0.0
    current_weight: float = 0.0  # smooth weighted round-robin state

    def is_available(self, now: float) -> bool:
        if self.health is Health.COOLING_DOWN and now >= self.cooldown_until:
            self.health = Health.UP
            logger.info("deployment %s (%s) is back from cooldown", self.provider.name, self.model)
        return self.health is Health.UP

    def cool_down(self, seconds: float, now: float) -> None:
        if seconds <= 0:
            return
        self.health = Health.COOLING_DOWN
        self.cooldown_until = now + seconds

    def recover(self) -> None:
        self.health = Health.UP
        self.cooldown_until = 0.0


@dataclass(eq=False, slots=True)
class Route:
    name: str
    deployments: list[Deployment]
    aliases: tuple[str, ...] = ()
    strategy: Literal["round_robin", "least_outstanding"] = "round_robin"
    cooldown: float = 30.0
    created: int = field(default_factory=lambda: int(time.time()))
    kind: Literal["chat", "embedding"] = "chat"
    is_default: bool = False  # the server's default model (the one the chat page preselects)

    def card(self, name: str) -> ModelCard:
        """The model card of this route under one of its names; only its own name is the default."""
        return ModelCard(
            id=name, created=self.created, kind=self.kind, default=self.is_default and name == self.name
        )

    def ordered(self, now: float) -> list[Deployment]:
        """Deployments to try, best first; those cooling down come last, soonest to recover first."""
        up = [d for d in self.deployments if d.is_available(now)]
        down = sorted(
            (d for d in self.deployments if d.health is Health.COOLING_DOWN), key=lambda d: d.cooldown_until
        )
        if len(up) > 1:
            first = self._pick(up)
            up.remove(first)
            up.sort(key=lambda d: d.outstanding / d.weight)
            up.insert(0, first)
        return up + down

    def _pick(self, up: list[Deployment]) -> Deployment:
        if self.strategy == "least_outstanding":
            least = min(d.outstanding / d.weight for d in up)
            # Ties (an idle route, say) are shared out by weight instead of always going to the first.
            up = [d for d in up if d.outstanding / d.weight == least]
            if len(up) == 1:
                return up[0]
        # Smooth weighted round-robin (as nginx does): even spread, exact proportions.
        total = sum(d.weight for d in up)
        for d in up:
            d.current_weight += d.weight
        best = max(up, key=lambda d: d.current_weight)
        best.current_weight -= total
        return best


class Router:
    """Resolves names and opens delta streams with failover."""

    def __init__(
        self,
        routes: list[Route],
        *,
        clock: Callable[[], float] = time.monotonic,
        discover: Callable[[], list[Route]] | None = None,
        memory: Callable[[], MemoryReport] | None = None,
    ) -> None:
        self._routes: list[Route] = []
        self._memory = memory
        self._by_name: dict[str, Route] = {}
        self._add(routes)
        self._clock = clock
        self._discover = discover
        self._discovering = asyncio.Lock()

    def _add(self, routes: list[Route]) -> None:
        for route in routes:
            self._routes.append(route)
            for name in (route.name, *route.aliases):
                self._by_name.setdefault(name, route)

    async def refresh(self) -> None:
        """Add the routes that appeared since (a GGUF dropped into the models dir).

        Discovery reads each new file's metadata: it runs in a worker thread, one at a time.
        """
        if self._discover is None:
            return
        async with self._discovering:
            self._add(await asyncio.to_thread(self._discover))

    async def find(self, name: str) -> Route:
        """``resolve``, looking for new routes first when the name is unknown."""
        if name not in self._by_name:
            await self.refresh()
        return self.resolve(name)

    @property
    def routes(self) -> list[Route]:
        return self._routes

    @property
    def providers(self) -> list[Provider]:
        seen: dict[int, Provider] = {}
        for route in self._routes:
            for d in route.deployments:
                seen.setdefault(id(d.provider), d.provider)
        return list(seen.values())

    def resolve(self, name: str) -> Route:
        route = self._by_name.get(name)
        if route is None:
            raise ModelNotFound(name)
        return route

    def _card(self, name: str, route: Route) -> ModelCard:
        # A route's card shows its first deployment that loads on demand, else its first deployment.
        providers = [d.provider for d in route.deployments]
        provider = next((p for p in providers if p.can_load), providers[0])
        state = provider.model_state()
        return route.card(name).model_copy(
            update={
                "status": state.status,
                "context_length": state.context_length,
                "size_mb": state.size_mb,
                "memory_mb": state.memory_mb,
            }
        )

    def cards(self) -> list[ModelCard]:
        cards: list[ModelCard] = []
        for route in self._routes:
            cards.append(self._card(route.name, route))
            cards.extend(self._card(a, route) for a in route.aliases if self._by_name[a] is route)
        return cards

    def memory(self) -> MemoryReport | None:
        """The local models' memory budget and its use; None without local models on demand."""
        return self._memory() if self._memory is not None else None

    def card(self, name: str) -> ModelCard:
        return self._card(name, self.resolve(name))

    async def _loadable(self, name: str) -> list[Provider]:
        providers = [d.provider for d in (await self.find(name)).deployments if d.provider.can_load]
        if not providers:
            raise InvalidRequest(
                f"The model '{name}' is not a local model: it cannot be loaded or unloaded.", param="model"
            )
        return providers

    async def load(self, name: str) -> ModelCard:
        """Load every local deployment of a model; answers once they are loaded."""
        for provider in await self._loadable(name):
            await provider.load()
        return self.card(name)

    async def unload(self, name: str) -> ModelCard:
        """Unload every local deployment of a model once its requests in flight are done."""
        for provider in await self._loadable(name):
            await provider.unload()
        return self.card(name)

    def chat(self, request: ChatCompletionRequest) -> AsyncIterator[Delta]:
        return self._open(request.model, lambda p, m: p.chat(request, model=m))

    def complete(self, request: CompletionRequest) -> AsyncIterator[Delta]:
        return self._open(request.model, lambda p, m: p.complete(request, model=m))

    def messages(self, request: MessagesRequest) -> AsyncIterator[Delta | MessageEvent]:
        """Anthropic Messages: native events from Anthropic upstreams, chat deltas from the others."""
        return self._open(request.model, lambda p, m: p.messages(request, model=m))

    async def serves_responses(self, name: str) -> bool:
        """Whether /v1/responses for this model goes through natively: one of its deployments serves it."""
        return any(d.provider.serves_responses for d in (await self.find(name)).deployments)

    def responses(self, name: str, body: dict[str, Any], *, stream: bool) -> AsyncIterator[MessageEvent]:
        """A Responses body forwarded untranslated, with failover across the deployments that serve it."""
        return self._open(
            name,
            lambda p, m: p.responses(body, model=m, stream=stream),
            only=lambda p: p.serves_responses,
        )

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        return await self._call(request.model, lambda p, m: p.embed(request, model=m))

    async def count_tokens(self, request: CountTokensRequest) -> int:
        return await self._call(request.model, lambda p, m: p.count_tokens(request, model=m))

    async def _call(self, name: str, call: Callable[[Provider, str], Awaitable[ResultT]]) -> ResultT:
        """One non-streamed call, with the failover rules of a stream that fails before its first delta."""
        route = await self.find(name)
        last_error: InterferenceError | None = None
        for deployment in route.ordered(self._clock()):
            deployment.outstanding += 1
            try:
                result = await call(deployment.provider, deployment.model)
            except (Overloaded, UpstreamError) as exc:
                self._fail_over(route, deployment, exc)
                last_error = exc
                continue
            finally:
                deployment.outstanding -= 1
            deployment.recover()
            return result
        assert last_error is not None
        raise last_error

    def _fail_over(self, route: Route, deployment: Deployment, exc: Overloaded | UpstreamError) -> None:
        """Note a failure before the first byte; re-raises it when no other deployment should be tried."""
        if isinstance(exc, Overloaded):  # a full local engine: no cooldown, just try the next
            logger.info("deployment %s of %s is full; trying the next", deployment.provider.name, route.name)
            return
        if not exc.retryable:
            raise exc
        deployment.cool_down(route.cooldown, self._clock())
        logger.warning(
            "deployment %s of %s failed before its first byte, cooling down for %g s: %s",
            deployment.provider.name, route.name, route.cooldown, exc.message,
        )  # fmt: skip

    async def _open(
        self,
        name: str,
        call: Callable[[Provider, str], AsyncIterator[ItemT]],
        only: Callable[[Provider], bool] | None = None,
    ) -> AsyncIterator[ItemT]:
        route = await self.find(name)
        last_error: InterferenceError | None = None
        for deployment in route.ordered(self._clock()):
            if only is not None and not only(deployment.provider):
                continue
            stream = call(deployment.provider, deployment.model)
            deployment.outstanding += 1
            started = False
            try:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    deployment.recover()
                    return
                except (Overloaded, UpstreamError) as exc:
                    self._fail_over(route, deployment, exc)
                    last_error = exc
                    continue
                deployment.recover()
                started = True
                yield first
                async for delta in stream:
                    yield delta
                return
            except UpstreamError as exc:
                if started and exc.retryable:
                    deployment.cool_down(route.cooldown, self._clock())
                    logger.warning(
                        "deployment %s of %s failed mid-stream, cooling down for %g s: %s",
                        deployment.provider.name, route.name, route.cooldown, exc.message,
                    )  # fmt: skip
                raise
            finally:
                deployment.outstanding -= 1
                await aclose_stream(stream)
        if last_error is None:  # ``only`` left no deployment to try
            raise InvalidRequest(f"No deployment of '{name}' can serve this request.", param="model")
        raise last_error
