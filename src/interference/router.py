"""Model names and aliases to deployments; load balancing and failover across them.

A request names a public model (or an alias). Its route lists deployments (a provider plus the
model name that provider knows). The router orders them by strategy, healthy ones first, and opens
the stream on the first that answers:

- a retryable ``UpstreamError`` before the first delta (connect error, timeout, 429, 5xx, garbage)
  moves on to the next deployment and puts the failed one in cooldown (a circuit breaker that
  closes by itself when the cooldown ends, or at once when a last-resort attempt succeeds);
- ``Overloaded`` (a local engine's full queue) moves on without cooldown: the engine is healthy;
- any other error is the request's fault and is raised as is, before any byte is sent;
- a failure after the first delta cannot be retried (the client has output): it is raised to the
  serving layer, which ends the stream with an error event, and the deployment cools down.

Deployments in cooldown are tried last, soonest-to-recover first, so a request still succeeds when
every deployment believed healthy fails but one believed down has come back.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from .errors import InterferenceError, ModelNotFound, Overloaded, UpstreamError
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelCard
from .providers.base import Delta, Embeddings, Provider, aclose_stream

__all__ = ["Deployment", "Health", "Route", "Router"]

logger = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)


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

    def __init__(self, routes: list[Route], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._routes = routes
        self._by_name: dict[str, Route] = {}
        for route in routes:
            for name in (route.name, *route.aliases):
                self._by_name.setdefault(name, route)
        self._clock = clock

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

    def cards(self) -> list[ModelCard]:
        cards: list[ModelCard] = []
        for route in self._routes:
            cards.append(ModelCard(id=route.name, created=route.created))
            cards.extend(
                ModelCard(id=a, created=route.created) for a in route.aliases if self._by_name[a] is route
            )
        return cards

    def card(self, name: str) -> ModelCard:
        route = self.resolve(name)
        return ModelCard(id=name, created=route.created)

    def chat(self, request: ChatCompletionRequest) -> AsyncIterator[Delta]:
        return self._open(request, lambda p, m: p.chat(request, model=m))

    def complete(self, request: CompletionRequest) -> AsyncIterator[Delta]:
        return self._open(request, lambda p, m: p.complete(request, model=m))

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """One embeddings call, with the failover rules of a stream that fails before its first delta."""
        route = self.resolve(request.model)
        last_error: InterferenceError | None = None
        for deployment in route.ordered(self._clock()):
            deployment.outstanding += 1
            try:
                result = await deployment.provider.embed(request, model=deployment.model)
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
        request: RequestT,
        call: Callable[[Provider, str], AsyncIterator[Delta]],
    ) -> AsyncIterator[Delta]:
        route = self.resolve(request.model)
        last_error: InterferenceError | None = None
        for deployment in route.ordered(self._clock()):
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
        assert last_error is not None
        raise last_error
