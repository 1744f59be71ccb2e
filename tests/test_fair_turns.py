"""Fair turns: the local engine's waiting queue takes tenants round-robin, each tenant's requests in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_keys import add_key

from conftest import RunningServer, running_server
from interference.engine.handle import RequestHandle, WaitQueue
from interference.engine.types import EngineRequest


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _handle(loop: asyncio.AbstractEventLoop, tenant: str, n: int) -> RequestHandle:
    request = EngineRequest(request_id=f"{tenant}{n}", prompt=(1,), tenant=tenant)
    return RequestHandle(request, loop, lambda h: None, deadline=0.0)


def _drain(queue: WaitQueue) -> list[str]:
    order = []
    while (handle := queue.pop()) is not None:
        order.append(handle.request.request_id)
        queue.release()
    return order


def test_a_burst_does_not_hold_back_another_tenant(loop: asyncio.AbstractEventLoop) -> None:
    queue = WaitQueue(n_slots=1, max_waiting=64)
    for i in range(20):
        queue.put(_handle(loop, "a", i))
    queue.put(_handle(loop, "b", 0))
    order = _drain(queue)
    assert order[:2] == ["a0", "b0"]  # b waits for one slot at most
    assert order[2:] == [f"a{i}" for i in range(1, 20)]  # a's own requests keep their order


def test_a_tenant_arriving_after_a_burst_was_served_goes_next(loop: asyncio.AbstractEventLoop) -> None:
    queue = WaitQueue(n_slots=1, max_waiting=64)
    for i in range(5):
        queue.put(_handle(loop, "a", i))
    running = queue.pop()
    assert running is not None and running.request.request_id == "a0"
    queue.put(_handle(loop, "b", 0))  # b arrives while a0 runs and a1..a4 wait
    queue.release()
    assert _drain(queue) == ["b0", "a1", "a2", "a3", "a4"]


def test_tenants_take_turns_and_aborted_handles_are_skipped(loop: asyncio.AbstractEventLoop) -> None:
    queue = WaitQueue(n_slots=1, max_waiting=64)
    handles = {f"{t}{i}": _handle(loop, t, i) for t in "abc" for i in range(3)}
    for name in ("a0", "a1", "a2", "b0", "b1", "c0", "b2", "c1", "c2"):
        queue.put(handles[name])
    handles["b1"].abort()
    queue.remove(handles["c0"])
    assert len(queue) == 8
    assert _drain(queue) == ["a0", "b0", "c1", "a1", "b2", "c2", "a2"]
    assert len(queue) == 0


def _stream(server: RunningServer, key: str, done: dict[str, float], name: str, max_tokens: int) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and name not in done:
                done[name] = time.monotonic()


def test_the_server_serves_a_second_key_before_the_rest_of_a_burst(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    a, b = add_key(keys_file, "a"), add_key(keys_file, "b")
    args = (
        "--keys-file",
        str(keys_file),
        "-np",
        "1",
        "--no-embeddings",
        "--usage-db",
        str(tmp_path / "u.db"),
    )
    with running_server(*args, tmp=tmp_path) as server:
        first: dict[str, float] = {}
        threads = [threading.Thread(target=_stream, args=(server, a, first, f"a{i}", 48)) for i in range(5)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while server.metrics().get("interference_engine_requests_waiting", 0) < 4:
            assert time.monotonic() < deadline, "a's burst never queued"
            time.sleep(0.05)
        tb = threading.Thread(target=_stream, args=(server, b, first, "b", 8))
        tb.start()
        for t in [*threads, tb]:
            t.join()
    # One of a's requests held the slot when b arrived; b goes next, so it starts before the other four.
    # One more may slip in if that request ends while b's prompt is still being prepared.
    assert sum(first["b"] < first[f"a{i}"] for i in range(5)) >= 3
