"""The gateway over real HTTP: fake OpenAI-compatible upstreams on free ports, interference as a subprocess.

One gateway serves every scenario; each scenario has its own model name and its own upstreams, so
routing state (round-robin position, cooldowns) never leaks between tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from conftest import RunningServer, free_port, running_server
from fake_upstream import PIECES, FakeUpstream, gateway_config

TEXT = "".join(PIECES)
KEYS = {
    "main": "sk-main-7f3a9c1e5b",
    "k1": "sk-one-0a1b2c3d4e",
    "k2": "sk-two-9f8e7d6c5b",  # given through api_key_env
    "leak401": "sk-leak401-55aa66bb",
    "leak500": "sk-leak500-77cc88dd",
}
K2_ENV = "FAKE_UPSTREAM_K2_KEY"
MESSAGES = [{"role": "user", "content": "Say hello."}]

UPSTREAMS = (
    "main",
    "tools",
    "k1",
    "k2",
    "victim",
    "slow",
    "e500",
    "e429",
    "garbage",
    "healthy",
    "flaky",
    "steady",
    "torn",
    "garbage_mid",
    "bad400",
    "spare",
    "leak401",
    "leak500",
    "mixed",
    "drip",
)


@dataclass
class Gateway:
    server: RunningServer
    up: dict[str, FakeUpstream]
    dead_url: str

    @property
    def client(self) -> openai.OpenAI:
        return self.server.client(timeout=30.0)

    def http(self) -> httpx.Client:
        return self.server.http(timeout=30.0)


def _deployment(url: str, *, model: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, **({"model": model} if model else {}), **extra}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    up = {name: FakeUpstream().start() for name in UPSTREAMS}
    up["slow"].mode = "slow"
    up["e500"].mode = "500"
    up["e429"].mode = "429"
    up["garbage"].mode = "garbage"
    up["torn"].mode = "torn"
    up["garbage_mid"].mode = "garbage_mid"
    up["bad400"].mode = "400"
    up["leak401"].mode = "echo_key_401"
    up["leak500"].mode = "echo_key_500"
    up["tools"].mode = "tools"
    up["drip"].token_delay = 0.3
    dead_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    models = {
        "passthrough": (
            {"aliases": ["pt-alias"]},
            [_deployment(up["main"].url, model="up-model-a", api_key=KEYS["main"])],
        ),
        "tools": ({}, [_deployment(up["tools"].url)]),
        "keys": (
            {},
            [_deployment(up["k1"].url, api_key=KEYS["k1"]), _deployment(up["k2"].url, api_key_env=K2_ENV)],
        ),
        "failover": (
            {"cooldown": 30.0},
            [
                _deployment(up["victim"].url),
                _deployment(dead_url, connect_timeout=1.0),
                _deployment(up["slow"].url, timeout=0.5),
                _deployment(up["e500"].url),
                _deployment(up["e429"].url),
                _deployment(up["garbage"].url),
                _deployment(up["healthy"].url),
            ],
        ),
        "cooldown": ({"cooldown": 1.0}, [_deployment(up["flaky"].url), _deployment(up["steady"].url)]),
        "torn": ({}, [_deployment(up["torn"].url)]),
        "garbage-mid": ({}, [_deployment(up["garbage_mid"].url)]),
        "fourxx": ({}, [_deployment(up["bad400"].url), _deployment(up["spare"].url)]),
        "leak401": ({}, [_deployment(up["leak401"].url, api_key=KEYS["leak401"])]),
        "leak500": ({}, [_deployment(up["leak500"].url, api_key=KEYS["leak500"])]),
        "mix": ({}, [{"type": "local"}, _deployment(up["mixed"].url)]),
        "down": ({}, [_deployment(dead_url, connect_timeout=1.0)]),
        "drip": ({}, [_deployment(up["drip"].url)]),
    }
    config = tmp / "gateway.toml"
    config.write_text(gateway_config(models))
    try:
        with running_server("--config", str(config), tmp=tmp, env={K2_ENV: KEYS["k2"]}) as server:
            yield Gateway(server, up, dead_url)
    finally:
        for upstream in up.values():
            upstream.stop()


def _chat_stream(client: openai.OpenAI, model: str, **kwargs: Any) -> tuple[list[str], list[Any], Any]:
    """Content pieces, chunks, usage of one streamed chat completion."""
    pieces, chunks, usage = [], [], None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kwargs):
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    return pieces, chunks, usage


def _iter_payloads(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


# ---------------------------------------------------------------------- pass-through


def test_models_lists_every_configured_name_and_alias(gw: Gateway) -> None:
    ids = {m.id for m in gw.client.models.list()}
    assert {"passthrough", "pt-alias", "keys", "failover", "mix", "down", "gpt-4o"} <= ids


def test_stream_passes_through_intact(gw: Gateway) -> None:
    main = gw.up["main"]
    pieces, chunks, usage = _chat_stream(
        gw.client,
        "pt-alias",
        temperature=0.25,
        stream_options={"include_usage": True},
        extra_body={"top_k": 3, "vendor_extra": {"x": [1, 2]}},
    )
    assert pieces == list(PIECES)  # one chunk per upstream chunk, bytes untouched
    assert {c.model for c in chunks} == {"pt-alias"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert usage.prompt_tokens == 11 and usage.completion_tokens == len(PIECES)
    assert usage.prompt_tokens_details.cached_tokens == 4
    sent = main.bodies[-1]
    assert sent["model"] == "up-model-a"
    assert sent["top_k"] == 3 and sent["vendor_extra"] == {"x": [1, 2]} and sent["temperature"] == 0.25
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "n" not in sent and "max_tokens" not in sent  # only what the client set
    assert main.keys[-1] == f"Bearer {KEYS['main']}"


def test_non_stream_passes_through(gw: Gateway) -> None:
    reply = gw.client.chat.completions.create(model="passthrough", messages=MESSAGES, max_tokens=20)
    assert reply.model == "passthrough"
    assert reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == len(PIECES)
    assert (
        reply.usage.prompt_tokens_details is not None and reply.usage.prompt_tokens_details.cached_tokens == 4
    )
    assert gw.up["main"].bodies[-1]["max_tokens"] == 20 and "stream" not in gw.up["main"].bodies[-1]


def test_logprobs_pass_through(gw: Gateway) -> None:
    reply = gw.client.chat.completions.create(model="passthrough", messages=MESSAGES, logprobs=True)
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content is not None
    assert [t.token for t in reply.choices[0].logprobs.content] == list(PIECES)
    stream = gw.client.chat.completions.create(
        model="passthrough", messages=MESSAGES, logprobs=True, stream=True
    )
    tokens = [
        t.token
        for c in stream
        for ch in c.choices
        if ch.logprobs and ch.logprobs.content
        for t in ch.logprobs.content
    ]
    assert tokens == list(PIECES)


def test_text_completions_pass_through(gw: Gateway) -> None:
    reply = gw.client.completions.create(model="passthrough", prompt="Say hello.", logprobs=1)
    assert reply.choices[0].text == TEXT and reply.model == "passthrough"
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.tokens == list(PIECES)
    stream = gw.client.completions.create(model="passthrough", prompt="Say hello.", stream=True)
    assert [c.choices[0].text for c in stream if c.choices and c.choices[0].text] == list(PIECES)
    assert gw.up["main"].bodies[-1]["prompt"] == "Say hello."


def test_tool_calls_pass_through(gw: Gateway) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = gw.client.chat.completions.create(model="tools", messages=MESSAGES, tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
    )
    arguments, ids, finish = "", [], None
    for chunk in gw.client.chat.completions.create(
        model="tools", messages=MESSAGES, tools=tools, stream=True
    ):
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for piece in ch.delta.tool_calls or []:
                ids += [piece.id] if piece.id else []
                arguments += piece.function.arguments or "" if piece.function else ""
    assert (ids, arguments, finish) == (["call_1"], '{"city": "Paris"}', "tool_calls")
    assert gw.up["tools"].bodies[-1]["tools"] == tools


def test_each_upstream_gets_only_its_own_key(gw: Gateway) -> None:
    for i in range(6):
        if i % 2:
            assert _chat_stream(gw.client, "keys")[0] == list(PIECES)
        else:
            assert (
                gw.client.chat.completions.create(model="keys", messages=MESSAGES).choices[0].message.content
                == TEXT
            )
    k1, k2 = gw.up["k1"], gw.up["k2"]
    assert k1.hits == k2.hits == 3  # round-robin
    assert set(k1.keys) == {f"Bearer {KEYS['k1']}"}
    assert set(k2.keys) == {f"Bearer {KEYS['k2']}"}


# ---------------------------------------------------------------------- failover


def test_every_request_succeeds_while_one_deployment_is_healthy(gw: Gateway) -> None:
    up = gw.up
    started = time.monotonic()
    for i in range(16):
        if i == 5:
            up["victim"].stop()  # killed mid-test, with a warm keep-alive connection to it
        if i % 2:
            assert _chat_stream(gw.client, "failover")[0] == list(PIECES), i
        else:
            reply = gw.client.chat.completions.create(model="failover", messages=MESSAGES)
            assert reply.choices[0].message.content == TEXT, i
    # Each broken deployment cost at most one attempt: then it sat in cooldown.
    for name in ("slow", "e500", "e429", "garbage"):
        assert up[name].hits == 1, name
    assert up["victim"].hits >= 1 and up["victim"].hits + up["healthy"].hits == 16
    assert time.monotonic() - started < 15  # one 0.5 s timeout, no waiting on the 5 s upstream


def test_cooldown_expires_and_traffic_returns(gw: Gateway) -> None:
    flaky, steady = gw.up["flaky"], gw.up["steady"]
    flaky.mode = "500"
    for _ in range(4):
        assert (
            gw.client.chat.completions.create(model="cooldown", messages=MESSAGES).choices[0].message.content
            == TEXT
        )
    assert (flaky.hits, steady.hits) == (1, 4)
    flaky.mode = "ok"
    time.sleep(1.2)  # the configured cooldown is 1 s
    for _ in range(4):
        assert _chat_stream(gw.client, "cooldown")[0] == list(PIECES)
    assert flaky.hits == 3 and steady.hits == 6  # round-robin again


def test_request_errors_are_passed_through_without_failover(gw: Gateway) -> None:
    with gw.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "fourxx", "messages": MESSAGES})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "fake upstream says 400",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "fake_code",
        }
    }
    assert (gw.up["bad400"].hits, gw.up["spare"].hits) == (1, 0)


def test_no_deployment_left_is_an_error_before_any_byte(gw: Gateway) -> None:
    with gw.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "down", "messages": MESSAGES})
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unreachable"
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": "down", "messages": MESSAGES, "stream": True}
        ) as s:
            assert s.status_code == 502
            assert json.loads(s.read())["error"]["type"] == "upstream_error"


@pytest.mark.parametrize(("model", "upstream"), [("torn", "torn"), ("garbage-mid", "garbage_mid")])
def test_failure_after_first_token_ends_with_an_error_event(gw: Gateway, model: str, upstream: str) -> None:
    with (
        gw.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True}
        ) as r,
    ):
        assert r.status_code == 200
        payloads = list(_iter_payloads(r))
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert (
        error["type"] == "upstream_error" and error["code"] == "upstream_protocol_error" and error["message"]
    )
    content = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[:-2]]
    assert [c for c in content if c] == list(PIECES[:2])
    # The SDK sees the same thing as an APIError after the tokens it already got.
    pieces: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in gw.client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
            pieces += [c.delta.content for c in chunk.choices if c.delta.content]
    assert pieces == list(PIECES[:2])


# ---------------------------------------------------------------------- keys, local engine, disconnects


def test_keys_never_reach_clients_or_logs(gw: Gateway) -> None:
    with gw.http() as http:
        r401 = http.post("/v1/chat/completions", json={"model": "leak401", "messages": MESSAGES})
        r500 = http.post(
            "/v1/chat/completions", json={"model": "leak500", "messages": MESSAGES, "stream": True}
        )
    # The upstream refused the gateway's key, not the client's: a 502, and the key scrubbed from it.
    assert r401.status_code == 502 and r401.json()["error"]["code"] == "upstream_auth_failed"
    assert "[redacted]" in r401.json()["error"]["message"]
    assert r500.status_code == 500 and "[redacted]" in r500.json()["error"]["message"]
    assert gw.up["leak401"].keys == [f"Bearer {KEYS['leak401']}"]  # the upstream did get it
    log = gw.server.log
    assert "[redacted]" in log  # the failover warning was logged, scrubbed
    for key in KEYS.values():
        assert key not in r401.text and key not in r500.text
        assert key not in log


def test_local_engine_is_one_more_deployment(gw: Gateway) -> None:
    mixed = gw.up["mixed"]
    replies = [
        gw.client.chat.completions.create(model="mix", messages=MESSAGES, max_tokens=8) for _ in range(4)
    ]
    assert mixed.hits == 2  # round-robin between the local engine and the upstream
    local = [r for r in replies if r.choices[0].message.content != TEXT]
    assert len(local) == 2
    for r in local:
        assert r.model == "mix" and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    mixed.mode = "500"
    for _ in range(3):
        pieces, chunks, _ = _chat_stream(gw.client, "mix", max_tokens=8)
        assert pieces and pieces != list(PIECES)  # the local engine answered
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert mixed.hits == 3


def test_streams_are_flushed_and_a_disconnect_closes_the_upstream(gw: Gateway) -> None:
    drip = gw.up["drip"]  # 0.3 s between chunks
    arrivals = []
    with (
        gw.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": "drip", "messages": MESSAGES, "stream": True}
        ) as r,
    ):
        for payload in _iter_payloads(r):
            if payload != "[DONE]" and json.loads(payload)["choices"][0]["delta"].get("content"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == len(PIECES)
    assert arrivals[-1] - arrivals[0] > 0.2 * (len(PIECES) - 1)  # each chunk went out as it came
    assert drip.streams_closed_early == 0
    with (
        gw.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": "drip", "messages": MESSAGES, "stream": True}
        ) as r,
    ):
        for line in r.iter_lines():
            if '"content":"Hel"' in line:
                break
    deadline = time.monotonic() + 5
    while drip.streams_closed_early == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert drip.streams_closed_early == 1
