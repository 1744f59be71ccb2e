"""Graceful shutdown of a real server process with streams in flight."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from conftest import RunningServer, running_server
from interference.api.app import create_app
from interference.protocol import ChatCompletionRequest, CompletionRequest
from interference.providers.base import Delta, Provider
from interference.router import Deployment, Route, Router
from interference.settings import Settings

# SmolLM2's end tokens (<|endoftext|>, <|im_end|>) are banned, so each stream runs to max_tokens.
NO_END = {"0": -100, "2": -100}


def _body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "logit_bias": NO_END,
        "stream": True,
    }


class _Stream(threading.Thread):
    """One streamed request read to its end in a thread; ``started`` is set at its first event."""

    def __init__(self, server: RunningServer, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url = server.url
        self.max_tokens = max_tokens
        self.started = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/chat/completions", json=_body(self.max_tokens), timeout=300
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[len("data: ") :])
                        self.started.set()
        except BaseException as exc:
            self.error = exc
            self.started.set()


def _start_streams(server: RunningServer, n: int, max_tokens: int) -> list[_Stream]:
    streams = [_Stream(server, max_tokens) for _ in range(n)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(120)
        assert s.error is None, s.error
    return streams


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_running_streams_finish_within_the_timeout(tmp_path: Path) -> None:
    with running_server("--shutdown-timeout", "600", tmp=tmp_path) as server:
        streams = _start_streams(server, 2, 120)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not _refuses_connections(server.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _refuses_connections(server.port)
        assert any(s.is_alive() for s in streams)  # still streaming while new connections are refused
        for s in streams:
            s.join(600)
            assert s.error is None, s.error
            assert s.events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in s.events[:-1]]
            assert not [c for c in chunks if "error" in c]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(60) == 0
        assert "draining" in server.log


def test_streams_still_running_at_the_timeout_end_with_an_error(tmp_path: Path) -> None:
    with running_server("--shutdown-timeout", "1", tmp=tmp_path) as server:
        streams = _start_streams(server, 3, 1500)
        server.process.send_signal(signal.SIGINT)
        for s in streams:
            s.join(120)
            assert s.error is None, s.error
            assert s.events[-1] == "[DONE]"
            error = json.loads(s.events[-2])["error"]
            assert error["code"] == "server_shutting_down"
            assert set(error) == {"message", "type", "param", "code"}
        assert server.process.wait(60) == 0
        assert "Traceback" not in server.log


class _Fine(Provider):
    name = "fine"

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="ok", finish_reason="stop")

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="ok", finish_reason="stop")


def test_health_is_503_once_draining() -> None:
    app = create_app(Settings(), Router([Route(name="fine", deployments=[Deployment(_Fine(), "x")])]))

    async def check() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200
            app.state.interference.shutdown.begin()
            r = await client.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "shutting_down"}

    asyncio.run(check())
