"""The ingress's relay of a replica's stream, in one process: retries on a lost replica, typed errors.

The whole path runs on a real two-node cluster in tests/test_ray.py; these stand-in streams pin the
cases a cluster cannot stage on demand (a replica lost exactly before or after its first delta).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.serve")

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from interference.errors import EngineFailure, InvalidRequest, ServiceUnavailable
from interference.ray import provider


class Stream:
    """What a ``DeploymentResponseGenerator`` offers the relay: assignment, items, cancel."""

    def __init__(self, items: list[Any], *, fail: BaseException | None = None, assign: float = 0.0) -> None:
        self.items, self.fail, self.assign = items, fail, assign
        self.cancelled = False

    async def _fetch_future_result_async(self) -> None:
        await asyncio.sleep(self.assign)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item
        if self.fail is not None:
            raise self.fail

    def cancel(self) -> None:
        self.cancelled = True


def starts(*streams: Stream) -> Callable[[], Stream]:
    queue = list(streams)
    return lambda: queue.pop(0)


async def collect(start: Callable[[], Stream]) -> list[Any]:
    return [item async for item in provider._relay(start)]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provider, "RETRY_PAUSE", 0.0)
    monkeypatch.setattr(provider, "ASSIGN_TIMEOUT", 0.2)


def test_a_replica_lost_before_its_first_delta_hands_the_request_on() -> None:
    lost, served = Stream([], fail=RayActorError()), Stream(["a", "b"])
    assert asyncio.run(collect(starts(lost, served))) == ["a", "b"]
    assert lost.cancelled and served.cancelled


def test_after_a_delta_the_loss_ends_the_stream() -> None:
    with pytest.raises(ServiceUnavailable):
        asyncio.run(collect(starts(Stream(["a"], fail=RayActorError()), Stream(["never"]))))


def test_tries_are_bounded() -> None:
    streams = [Stream([], fail=RayActorError()) for _ in range(provider.ATTEMPTS)]
    with pytest.raises(ServiceUnavailable) as info:
        asyncio.run(collect(starts(*streams)))
    assert info.value.retry_after == provider.RETRY_AFTER


def test_a_replica_error_keeps_its_type_and_is_not_retried() -> None:
    bad = InvalidRequest("prompt too long", param="messages")
    raised = RayTaskError("chat", "traceback", bad)
    with pytest.raises(InvalidRequest):
        asyncio.run(collect(starts(Stream([], fail=raised), Stream(["never"]))))
    crash = RayTaskError("chat", "traceback", ValueError("boom"))
    with pytest.raises(EngineFailure):
        asyncio.run(collect(starts(Stream([], fail=crash))))


def test_no_replica_in_time_is_a_503_with_retry_after() -> None:
    with pytest.raises(ServiceUnavailable) as info:
        asyncio.run(collect(starts(Stream(["a"], assign=5.0))))
    assert info.value.retry_after == provider.RETRY_AFTER
    full = provider.replica_error(BackPressureError(num_queued_requests=9, max_queued_requests=9))
    assert isinstance(full, ServiceUnavailable) and full.retry_after == provider.RETRY_AFTER


def test_a_whole_answer_keeps_its_type_too() -> None:
    async def fails(exc: BaseException) -> None:
        raise exc

    async def answers() -> int:
        return 7

    assert asyncio.run(provider._answer(answers())) == 7
    bad = InvalidRequest("no embeddings here", param="model")
    with pytest.raises(InvalidRequest):
        asyncio.run(provider._answer(fails(RayTaskError("embed", "traceback", bad))))
    with pytest.raises(ServiceUnavailable):
        asyncio.run(provider._answer(fails(RayActorError())))
