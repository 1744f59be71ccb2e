"""Paths the real engine cannot be made to hit: a provider that breaks, before and after the first byte.

These drive the real app in-process (httpx's ASGI transport) with a provider that raises.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from interference.api.app import create_app
from interference.protocol import ChatCompletionRequest, CompletionRequest
from interference.providers.base import Delta, Provider
from interference.router import Deployment, Route, Router
from interference.settings import Settings


class BrokenProvider(Provider):
    """Fails with a plain bug (not an InterferenceError) after ``good`` deltas."""

    name = "broken"

    def __init__(self, good: int) -> None:
        self.good = good

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        for i in range(self.good):
            yield Delta(text=f"piece{i} ")
        raise RuntimeError("a bug at 0x7f00deadbeef")

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        raise RuntimeError("a bug")
        yield Delta()  # pragma: no cover - makes this an async generator


class FineProvider(Provider):
    name = "fine"

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="ok", finish_reason="stop")

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="ok", finish_reason="stop")


def _client() -> httpx.AsyncClient:
    routes = [
        Route(name="broken-early", deployments=[Deployment(BrokenProvider(0), "x")]),
        Route(name="broken-late", deployments=[Deployment(BrokenProvider(2), "x")]),
        Route(name="fine", deployments=[Deployment(FineProvider(), "x")]),
    ]
    app = create_app(Settings(), Router(routes))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _chat(model: str, **fields: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_unexpected_error_is_a_500_envelope_and_serving_goes_on() -> None:
    asyncio.run(_unexpected_error())


async def _unexpected_error() -> None:
    async with _client() as client:
        for body in (_chat("broken-early"), _chat("broken-early", stream=True)):
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 500
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["type"] == "server_error"
            assert "0x7f" not in err["message"]
        r = await client.post("/v1/completions", json={"model": "broken-early", "prompt": "x"})
        assert r.status_code == 500
        r = await client.post("/v1/chat/completions", json=_chat("fine"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "ok"


def test_failure_after_first_byte_is_one_error_event_then_done() -> None:
    asyncio.run(_failure_after_first_byte())


async def _failure_after_first_byte() -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat("broken-late", stream=True))
        assert r.status_code == 200
        events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert error["error"]["type"] == "server_error"
        texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
        assert texts == ["piece0 ", "piece1 "]
