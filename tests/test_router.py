"""Router: ordering, weights, least-outstanding, failover and cooldown, with fake providers and clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from interference.errors import (
    InterferenceError,
    ModelNotFound,
    Overloaded,
    UpstreamAuthError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from interference.protocol import ChatCompletionRequest, CompletionRequest
from interference.providers.base import Delta, Provider
from interference.router import Deployment, Health, Route, Router


class FakeProvider(Provider):
    """Yields ``texts``; raises ``fail`` before the first delta, or after ``fail_after`` deltas."""

    def __init__(
        self, name: str, *, fail: InterferenceError | None = None, fail_after: int | None = None
    ) -> None:
        self.name = name
        self.fail = fail
        self.fail_after = fail_after
        self.calls = 0
        self.open_streams = 0
        self.texts = [f"{name}-1", f"{name}-2"]

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        self.calls += 1
        self.open_streams += 1
        try:
            if self.fail is not None and self.fail_after is None:
                raise self.fail
            for i, text in enumerate(self.texts):
                if self.fail is not None and i == self.fail_after:
                    raise self.fail
                yield Delta(text=text, finish_reason="stop" if i == len(self.texts) - 1 else None)
        finally:
            self.open_streams -= 1

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        async for delta in self.chat(_request(request.model), model=model):
            yield delta


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(model: str = "m") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(
        f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}'
    )


def _router(
    *providers: FakeProvider,
    weights: tuple[float, ...] | None = None,
    strategy: Literal["round_robin", "least_outstanding"] = "round_robin",
    cooldown: float = 10.0,
) -> tuple[Router, Route, Clock]:
    weights = weights or tuple(1.0 for _ in providers)
    deployments = [Deployment(p, p.name, weight=w) for p, w in zip(providers, weights, strict=True)]
    route = Route("m", deployments, aliases=("alias",), strategy=strategy, cooldown=cooldown)
    clock = Clock()
    return Router([route], clock=clock), route, clock


async def _texts(router: Router, model: str = "m") -> list[str]:
    return [d.text async for d in router.chat(_request(model))]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------- ordering


def test_smooth_weighted_round_robin_spreads_in_exact_proportions() -> None:
    heavy, light = FakeProvider("heavy"), FakeProvider("light")
    _, route, clock = _router(heavy, light, weights=(3.0, 1.0))
    picks = [route.ordered(clock())[0].provider.name for _ in range(12)]
    assert picks.count("heavy") == 9 and picks.count("light") == 3
    assert all("light" in picks[i : i + 4] for i in range(0, 12, 4))  # interleaved, not bunched


def test_fallbacks_follow_the_first_pick_least_loaded_first() -> None:
    a, b, c = FakeProvider("a"), FakeProvider("b"), FakeProvider("c")
    _, route, clock = _router(a, b, c)
    route.deployments[1].outstanding = 5
    order = [d.provider.name for d in route.ordered(clock())]
    assert order == ["a", "c", "b"]


def test_least_outstanding_picks_the_idlest_and_spreads_ties() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    _, route, clock = _router(a, b, strategy="least_outstanding")
    route.deployments[0].outstanding = 2
    assert route.ordered(clock())[0].provider is b
    route.deployments[0].outstanding = 0
    assert {route.ordered(clock())[0].provider.name for _ in range(4)} == {"a", "b"}


def test_least_outstanding_scales_by_weight() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    _, route, clock = _router(a, b, weights=(4.0, 1.0), strategy="least_outstanding")
    route.deployments[0].outstanding = 3  # 3/4 < 1/1
    route.deployments[1].outstanding = 1
    assert route.ordered(clock())[0].provider is a


def test_outstanding_counts_open_streams() -> None:
    a = FakeProvider("a")
    router, route, _ = _router(a)

    async def scenario() -> None:
        stream = router.chat(_request())
        await anext(stream)
        assert route.deployments[0].outstanding == 1
        await stream.aclose()  # the client went away mid-stream
        assert route.deployments[0].outstanding == 0
        assert a.open_streams == 0  # the provider's stream was closed too

    run(scenario())


# ---------------------------------------------------------------------- failover and cooldown


def test_failure_before_first_delta_fails_over_and_cools_down() -> None:
    bad, good = FakeProvider("bad", fail=UpstreamConnectError("refused")), FakeProvider("good")
    router, route, clock = _router(bad, good, cooldown=10.0)
    assert run(_texts(router)) == ["good-1", "good-2"]
    assert route.deployments[0].health is Health.COOLING_DOWN and bad.open_streams == 0
    for _ in range(3):
        assert run(_texts(router)) == ["good-1", "good-2"]
    assert bad.calls == 1  # not tried while cooling and something else is up
    bad.fail = None
    clock.now += 10.0  # the breaker closes by itself
    assert sorted(run(_texts(router))[0] for _ in range(2)) == ["bad-1", "good-1"]
    assert route.deployments[0].health is Health.UP


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_statuses_fail_over(status: int) -> None:
    bad, good = FakeProvider("bad", fail=UpstreamStatusError(status, "no")), FakeProvider("good")
    router, route, _ = _router(bad, good)
    assert run(_texts(router)) == ["good-1", "good-2"]
    assert route.deployments[0].health is Health.COOLING_DOWN


@pytest.mark.parametrize("status", [401, 403])
def test_a_deployment_whose_key_is_refused_fails_over_and_cools_down(status: int) -> None:
    bad, good = FakeProvider("bad", fail=UpstreamAuthError(status, "bad key")), FakeProvider("good")
    router, route, _ = _router(bad, good)
    for _ in range(4):
        assert run(_texts(router)) == ["good-1", "good-2"]
    assert bad.calls == 1 and route.deployments[0].health is Health.COOLING_DOWN
    good.fail = UpstreamAuthError(status, "bad key too")
    with pytest.raises(UpstreamAuthError) as info:
        run(_texts(router))
    assert info.value.status == 502 and info.value.upstream_status == status  # never the client's 401


def test_request_errors_are_raised_without_failover_or_cooldown() -> None:
    bad, good = FakeProvider("bad", fail=UpstreamStatusError(400, "bad request")), FakeProvider("good")
    router, route, _ = _router(bad, good)
    with pytest.raises(UpstreamStatusError) as info:
        run(_texts(router))
    assert info.value.status == 400 and good.calls == 0
    assert route.deployments[0].health is Health.UP


def test_a_full_local_engine_passes_the_request_on_without_cooldown() -> None:
    full, other = FakeProvider("full", fail=Overloaded("queue full")), FakeProvider("other")
    router, route, _ = _router(full, other)
    assert run(_texts(router)) == ["other-1", "other-2"]
    assert route.deployments[0].health is Health.UP


def test_failure_after_first_delta_is_raised_and_cools_down() -> None:
    torn = FakeProvider("torn", fail=UpstreamProtocolError("cut"), fail_after=1)
    good = FakeProvider("good")
    router, route, _ = _router(torn, good)

    async def scenario() -> list[str]:
        got: list[str] = []
        with pytest.raises(UpstreamProtocolError):
            async for delta in router.chat(_request()):
                got.append(delta.text)
        return got

    assert run(scenario()) == ["torn-1"]  # no retry once output went out
    assert good.calls == 0
    assert route.deployments[0].health is Health.COOLING_DOWN
    assert route.deployments[0].outstanding == 0


def test_cooling_deployments_are_the_last_resort_soonest_first() -> None:
    a, b, c = (FakeProvider(n, fail=UpstreamConnectError("down")) for n in "abc")
    router, route, clock = _router(a, b, c, cooldown=10.0)
    with pytest.raises(UpstreamConnectError):
        run(_texts(router))
    assert [d.health for d in route.deployments] == [Health.COOLING_DOWN] * 3
    route.deployments[2].cooldown_until = clock.now + 1  # c recovers first
    c.fail = None
    assert run(_texts(router)) == ["c-1", "c-2"]
    assert route.deployments[2].health is Health.UP  # a success closes the breaker at once
    assert (a.calls, b.calls) == (1, 1)  # c answered first, so a and b were not tried again


def test_zero_cooldown_never_benches_a_deployment() -> None:
    bad, good = FakeProvider("bad", fail=UpstreamConnectError("x")), FakeProvider("good")
    router, route, _ = _router(bad, good, cooldown=0.0)
    run(_texts(router))
    assert route.deployments[0].health is Health.UP


def test_last_error_is_raised_when_everything_fails() -> None:
    a = FakeProvider("a", fail=UpstreamConnectError("a down"))
    b = FakeProvider("b", fail=UpstreamStatusError(503, "b busy"))
    router, _, _ = _router(a, b)
    with pytest.raises(UpstreamStatusError) as info:
        run(_texts(router))
    assert info.value.status == 503


# ---------------------------------------------------------------------- names


def test_names_aliases_and_cards() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    first = Route("one", [Deployment(a, "a")], aliases=("shared", "x"))
    second = Route("two", [Deployment(b, "b")], aliases=("shared",))
    router = Router([first, second])
    assert router.resolve("shared") is first  # the first route wins a clash
    assert [c.id for c in router.cards()] == ["one", "shared", "x", "two"]
    assert router.providers == [a, b]
    with pytest.raises(ModelNotFound):
        router.resolve("nope")
    assert run(_texts(router, "x")) == ["a-1", "a-2"]


def test_completions_route_the_same_way() -> None:
    bad, good = FakeProvider("bad", fail=UpstreamConnectError("x")), FakeProvider("good")
    router, _, _ = _router(bad, good)
    request = CompletionRequest.model_validate_json('{"model": "alias", "prompt": "hi"}')

    async def texts() -> list[str]:
        return [d.text async for d in router.complete(request)]

    assert run(texts()) == ["good-1", "good-2"]
