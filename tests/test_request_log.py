"""Request ids on every response, the access log (text and JSON), and CORS, over raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, running_server
from interference.api.app import create_app
from interference.protocol import ChatCompletionRequest, CompletionRequest
from interference.providers.base import Delta, Provider, TokenUsage
from interference.router import Deployment, Route, Router
from interference.settings import Settings, load_settings

KEY = "sk-log-5e1c"
ORIGINS = ("http://a.test", "http://b.test")
NEW_ID = re.compile(r"[0-9a-f]{32}")
REQUESTED_HEADERS = "authorization, x-api-key, anthropic-version, content-type"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    args = ["--log-format", "json", "--api-key", KEY, "--parallel", "2", "--no-embeddings"]
    for origin in ORIGINS:
        args += ["--cors-origin", origin]
    with running_server(*args, tmp=tmp_path_factory.mktemp("logged")) as server:
        yield server


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _access_entries(server: RunningServer, request_id: str) -> list[dict[str, Any]]:
    """The JSON access-log lines of one request (waits a little: the line is written after the body)."""
    deadline = time.monotonic() + 10
    while True:
        entries = []
        for line in server.log.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("request_id") == request_id:
                    entries.append(entry)
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


# ---------------------------------------------------------------- request ids


def test_every_response_carries_a_request_id(logged: RunningServer) -> None:
    with httpx.Client(base_url=logged.url, timeout=60) as http:
        ids = set()
        for method, path, headers in (
            ("GET", "/health", {}),
            ("GET", "/", {}),
            ("GET", "/v1/models", {}),  # 401: no key
            ("GET", "/v1/models", _auth()),
            ("GET", "/v1/nope", _auth()),  # 404
            ("POST", "/v1/chat/completions", _auth()),  # 400: no body
        ):
            r = http.request(method, path, headers=headers)
            assert NEW_ID.fullmatch(r.headers["x-request-id"]), (path, r.status_code)
            ids.add(r.headers["x-request-id"])
        assert len(ids) == 6  # a new one each time

        mine = http.get("/v1/models", headers={**_auth(), "x-request-id": "client-req-42"})
        assert mine.headers["x-request-id"] == "client-req-42"
        # An id that could forge log lines (or is absurdly long) is replaced, not echoed.
        for bad in ("two words", "x" * 200, "a\tb"):
            r = http.get("/health", headers={"x-request-id": bad})
            assert NEW_ID.fullmatch(r.headers["x-request-id"])


def test_json_access_log_of_a_stream(logged: RunningServer) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=logged.url, timeout=120) as http:
        r = http.post("/v1/chat/completions", json=body, headers={**_auth(), "x-request-id": "stream-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "stream-1"
        usage = json.loads(r.text.split("data: ")[-2])["usage"]
    [entry] = _access_entries(logged, "stream-1")
    assert set(entry) == {
        "time", "request_id", "method", "route", "model", "status", "prompt_tokens",
        "completion_tokens", "ttft_ms", "duration_ms",
    }  # fmt: skip
    assert entry["method"] == "POST" and entry["route"] == "/v1/chat/completions"
    assert entry["model"] == "gpt-4o-mini" and entry["status"] == 200
    assert entry["prompt_tokens"] == usage["prompt_tokens"]
    assert entry["completion_tokens"] == usage["completion_tokens"] > 0
    assert 0 < entry["ttft_ms"] <= entry["duration_ms"]
    assert entry["time"].endswith("+00:00")


def test_json_access_log_of_other_requests(logged: RunningServer) -> None:
    with httpx.Client(base_url=logged.url, timeout=120) as http:
        http.post("/chat/completions", json=CHAT, headers={**_auth(), "x-request-id": "whole-1"})
        http.get("/v1/models/gpt-4", headers={**_auth(), "x-request-id": "card-1"})
        http.get("/v1/models", headers={"x-request-id": "denied-1"})
    [whole] = _access_entries(logged, "whole-1")
    assert whole["route"] == "/chat/completions" and whole["status"] == 200
    assert whole["completion_tokens"] > 0 and whole["ttft_ms"] is not None
    [card] = _access_entries(logged, "card-1")
    assert card["route"] == "/v1/models/{model_id:path}"  # the route, not the path
    assert card["model"] is None and card["prompt_tokens"] is None
    [denied] = _access_entries(logged, "denied-1")
    assert denied["status"] == 401
    # Only JSON objects on the access log's lines: uvicorn's own access log is off.
    assert not any('"GET /v1/models' in line for line in logged.log.splitlines())


def test_text_access_log_is_the_default(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/v1/models", headers={"x-request-id": "text-log-1"}, timeout=10)
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while "id=text-log-1" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [line for line in server.log.splitlines() if "id=text-log-1" in line]
    assert '"GET /v1/models" 200' in line


# ---------------------------------------------------------------- CORS


def test_no_cors_headers_by_default(server: RunningServer) -> None:
    origin = {"Origin": "http://a.test"}
    r = httpx.get(f"{server.url}/v1/models", headers=origin, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_preflight_and_responses(logged: RunningServer) -> None:
    with httpx.Client(base_url=logged.url, timeout=60) as http:
        for origin in ORIGINS:
            preflight = http.options(
                "/v1/chat/completions",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": REQUESTED_HEADERS,
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
            allowed = {
                h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
            }
            assert {"authorization", "x-api-key", "anthropic-version", "content-type"} <= allowed
            assert "POST" in preflight.headers["access-control-allow-methods"]
        r = http.get("/v1/models", headers={**_auth(), "Origin": ORIGINS[0]})
        assert r.headers["access-control-allow-origin"] == ORIGINS[0]
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        # A 401 carries the headers too, so a page can read why it was refused.
        denied = http.get("/v1/models", headers={"Origin": ORIGINS[1]})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGINS[1]
        # Other origins get nothing.
        other = http.options(
            "/v1/models", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        plain = http.get("/v1/models", headers={**_auth(), "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in plain.headers


class _FineProvider(Provider):
    name = "fine"

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="ok", finish_reason="stop", usage=TokenUsage(3, 1))

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        raise RuntimeError("a bug")
        yield Delta()  # pragma: no cover - makes this an async generator


def _client(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings, Router([Route(name="fine", deployments=[Deployment(_FineProvider(), "x")])]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_any_origin_with_star() -> None:
    async def run() -> None:
        async with _client(Settings(cors_origins=("*",))) as client:
            preflight = await client.options(
                "/v1/chat/completions",
                headers={
                    "Origin": "http://anywhere.test",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "x-api-key",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "*"
            r = await client.get("/v1/models", headers={"Origin": "http://anywhere.test"})
            assert r.headers["access-control-allow-origin"] == "*"

    asyncio.run(run())


def test_cors_origins_from_env_and_toml(tmp_path: Path) -> None:
    env = {"INTERFERENCE_CORS_ORIGINS": "http://a.test, http://b.test"}
    assert load_settings(env=env).cors_origins == ("http://a.test", "http://b.test")
    config = tmp_path / "c.toml"
    config.write_text('cors_origins = ["*"]\nlog_format = "json"\naccess_log = false\n')
    settings = load_settings(env={}, config_file=config)
    assert settings.cors_origins == ("*",) and settings.log_format == "json" and not settings.access_log
    assert load_settings({"cors_origins": ["http://c.test"]}, env=env).cors_origins == ("http://c.test",)
    assert load_settings(env={}).cors_origins == ()


# ---------------------------------------------------------------- in-process edges


def test_a_bug_still_answers_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        async with _client(Settings()) as client:
            r = await client.post(
                "/v1/completions", json={"model": "fine", "prompt": "x"}, headers={"x-request-id": "bug-1"}
            )
            assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"

    with caplog.at_level(logging.INFO, logger="interference"):
        asyncio.run(run())
    [line] = [r.getMessage() for r in caplog.records if r.name == "interference.access"]
    assert "id=bug-1" in line and '"POST /v1/completions" 500' in line


def test_no_access_log(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        async with _client(Settings(access_log=False)) as client:
            r = await client.post("/v1/chat/completions", json={"model": "fine", "messages": []})
            assert r.headers["x-request-id"]

    with caplog.at_level(logging.INFO, logger="interference"):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.name == "interference.access"]
