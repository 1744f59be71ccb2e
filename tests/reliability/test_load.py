"""Load and disconnects against the real server: many streams, then a storm of clients that vanish."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import RunningServer, running_server

STREAMS = 500
CONCURRENCY = 32
STORM = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # One slot per concurrent client, so all of them decode together.
    with running_server("-np", str(CONCURRENCY), "-c", "8192", tmp=tmp_path_factory.mktemp("load")) as s:
        yield s


def _body(i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": f"Count to {i % 7 + 2}."}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": i,
    }


async def _one_stream(client: httpx.AsyncClient, i: int) -> list[str]:
    """The events of one stream; raises when it was not a 200."""
    async with client.stream("POST", "/v1/chat/completions", json=_body(i, 2)) as r:
        assert r.status_code == 200, await r.aread()
        return [line[len("data: ") :] async for line in r.aiter_lines() if line.startswith("data: ")]


def _check_stream(events: list[str]) -> None:
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    usage = [c for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == []
    assert 1 <= usage[0]["usage"]["completion_tokens"] <= 2


def test_many_streams_all_complete(server: RunningServer) -> None:
    async def run() -> list[list[str] | BaseException]:
        todo = iter(range(STREAMS))
        results: list[list[str] | BaseException] = []
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

            async def worker() -> None:
                for i in todo:
                    try:
                        results.append(await _one_stream(client, i))
                    except Exception as exc:  # collected: the assertion below names every failure
                        results.append(exc)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return results

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert len(results) == STREAMS
    for events in results:
        assert isinstance(events, list)
        _check_stream(events)


def _gauges(server: RunningServer) -> tuple[float, float]:
    m = server.metrics()
    return m["interference_engine_slots_active"], m["interference_engine_requests_waiting"]


def test_disconnect_storm_frees_every_slot(server: RunningServer) -> None:
    async def vanish(client: httpx.AsyncClient, i: int) -> int:
        """Start a long stream and go away: after the first event, or before any answer."""
        body = _body(i, 200)
        if i % 4 == 0:
            request = client.build_request("POST", "/v1/chat/completions", json=body)
            task = asyncio.ensure_future(client.send(request, stream=True))
            await asyncio.sleep(0.05)
            task.cancel()
            return 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 200:
                async for _ in r.aiter_raw():
                    break  # leaving the block without reading on closes the connection
            else:
                await r.aread()
            return r.status_code

    async def storm() -> list[int | BaseException]:
        limits = httpx.Limits(max_connections=STORM)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(vanish(client, i) for i in range(STORM)), return_exceptions=True)

    results = asyncio.run(storm())
    unexpected = [r for r in results if isinstance(r, BaseException) and not _is_cancel(r)]
    assert not unexpected, unexpected[:3]
    # Streams were running (every slot) when their clients left; the rest were queued or refused.
    assert results.count(200) >= CONCURRENCY, results
    assert set(results) <= {0, 200, 429}, results
    deadline = time.monotonic() + 5
    while _gauges(server) != (0.0, 0.0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gauges(server) == (0.0, 0.0), server.metrics()

    # Decoding still works, to the full length asked for.
    with server.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={**_body(1, 16), "stream": False, "stream_options": None, "temperature": 0},
        )
    r.raise_for_status()
    assert r.json()["usage"]["completion_tokens"] >= 1
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert "Traceback" not in server.log


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)
