"""Upstream faults through a real gateway process in front of fake upstreams.

Each fault, the error it becomes at the boundary (``providers/http_upstream.py``), what the router does
with it (``router.py``) and what the client sees:

    fault                                error                  router          client, when no
                                                                                deployment is left
    connection refused                   UpstreamConnectError   fail over       502 upstream_unreachable
    TCP reset mid-stream                 UpstreamProtocolError  cool down       error event, [DONE]
    request written, closed unanswered   UpstreamProtocolError  fail over (*)   502 upstream_protocol_error
    a drip slower than the timeout       UpstreamTimeout        cool down       error event, [DONE]
    429 with Retry-After                 UpstreamStatusError    fail over       429 with that Retry-After
    a body that is not SSE               UpstreamProtocolError  fail over       502 upstream_protocol_error
    401 or 403 (the deployment's key)    UpstreamAuthError      fail over       502 upstream_auth_failed

"Fail over" also cools the deployment down. (*) never sent to the same deployment again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from conftest import RunningServer, free_port, running_server
from fake_upstream import PIECES, RAW_TEXT, FakeUpstream, RawUpstream, gateway_config

TEXT = "".join(PIECES)
MESSAGES = [{"role": "user", "content": "Say hello."}]
KEYS = {
    "auth401": "sk-bad-401-3e4f5a6b7c",
    "auth403": "sk-bad-403-8d9e0f1a2b",
    "auth_only": "sk-bad-only-c3d4e5f6a7",
    "good401": "sk-good-401-1a2b3c4d5e",
    "good403": "sk-good-403-5e4d3c2b1a",
}
RETRY_AFTER = "7"
STORM = 24  # concurrent requests in the 429 storm


@dataclass
class Gateway:
    server: RunningServer
    up: dict[str, FakeUpstream]
    raw: dict[str, RawUpstream]

    @property
    def client(self) -> openai.OpenAI:
        return self.server.client(timeout=30.0)

    def http(self) -> httpx.Client:
        return self.server.http(timeout=30.0)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("upstream-faults")
    modes = {
        "spare_refused": "ok",
        "spare_written": "ok",
        "stall": "stall_mid",
        "drip": "ok",
        "storm_a": "429",
        "storm_b": "429",
        "storm_c": "429",
        "spare_storm": "ok",
        "not_sse": "not_sse",
        "not_sse_b": "not_sse",
        "spare_not_sse": "ok",
        "auth401": "echo_key_401",
        "good401": "ok",
        "auth403": "403",
        "good403": "ok",
        "auth_only": "echo_key_401",
    }
    up = {name: FakeUpstream(mode=mode).start() for name, mode in modes.items()}
    for name in ("storm_a", "storm_b", "storm_c"):
        up[name].retry_after = RETRY_AFTER
    up["drip"].token_delay = 0.3
    raw = {
        "reset": RawUpstream(mode="reset_mid_stream").start(),
        "written": RawUpstream(mode="answer_then_close").start(),
    }
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there

    def to(name: str, **options: Any) -> dict[str, Any]:
        upstream = raw[name] if name in raw else up[name]
        return {"base_url": upstream.url, **({"api_key": KEYS[name]} if name in KEYS else {}), **options}

    models: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
        "refused": ({}, [{"base_url": dead, "connect_timeout": 1.0}]),
        "refused-spare": ({"cooldown": 30}, [{"base_url": dead}, to("spare_refused")]),
        "reset": ({}, [to("reset")]),
        # No cooldown, so round-robin comes back to the deployment that closes unanswered.
        "written": ({"cooldown": 0}, [to("written"), to("spare_written")]),
        "stall": ({}, [to("stall", timeout=0.5)]),
        "drip": ({}, [to("drip", timeout=1.0)]),
        "storm": ({}, [to("storm_a"), to("storm_b")]),
        "storm-spare": ({"cooldown": 30}, [to("storm_c"), to("spare_storm")]),
        "not-sse": ({}, [to("not_sse")]),
        "not-sse-spare": ({"cooldown": 30}, [to("not_sse_b"), to("spare_not_sse")]),
        "auth401": ({"cooldown": 30}, [to("auth401"), to("good401")]),
        "auth403": ({"cooldown": 30}, [to("auth403"), to("good403")]),
        "auth-only": ({}, [to("auth_only")]),
    }
    config = tmp / "gateway.toml"
    typed = {name: (options, [{"type": "openai", **d} for d in ds]) for name, (options, ds) in models.items()}
    config.write_text(gateway_config(typed))
    try:
        with running_server("--config", str(config), tmp=tmp) as server:
            yield Gateway(server, up, raw)
    finally:
        for upstream in up.values():
            upstream.stop()
        for r in raw.values():
            r.stop()


def _post(http: httpx.Client, model: str, *, stream: bool) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, **({"stream": True} if stream else {})}
    return http.post("/v1/chat/completions", json=body)


def _payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def _stream_payloads(gw: Gateway, model: str) -> list[str]:
    """The SSE payloads of one streamed request that was answered 200."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return _payloads(r)


def _ends_with_one_error(payloads: list[str], code: str) -> list[str]:
    """Asserts a stream that broke after its first token; returns the content it delivered first."""
    assert payloads[-1] == "[DONE]"
    errors = [json.loads(p)["error"] for p in payloads[:-1] if "error" in json.loads(p)]
    assert len(errors) == 1 and json.loads(payloads[-2])["error"] == errors[0]
    assert errors[0]["type"] == "upstream_error" and errors[0]["code"] == code and errors[0]["message"]
    return [c for p in payloads[:-2] if (c := json.loads(p)["choices"][0]["delta"].get("content"))]


def _ask(gw: Gateway, model: str, i: int) -> str:
    """One chat completion through the SDK, streamed on odd ``i``; its text."""
    if i % 2:
        stream = gw.client.chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    reply = gw.client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def _wait_for(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------- connection faults


def test_a_refused_upstream_fails_over_or_is_a_502(gw: Gateway) -> None:
    with gw.http() as http:
        for stream in (False, True):
            r = _post(http, "refused", stream=stream)
            assert r.status_code == 502, stream
            assert r.json()["error"]["code"] == "upstream_unreachable"
    assert [_ask(gw, "refused-spare", i) for i in range(6)] == [TEXT] * 6
    assert gw.up["spare_refused"].hits == 6
    assert "cooling down" in gw.server.log


def test_a_reset_mid_stream_ends_with_one_error_event_then_done(gw: Gateway) -> None:
    content = _ends_with_one_error(_stream_payloads(gw, "reset"), "upstream_protocol_error")
    assert content == ["Hel", "lo"]
    assert gw.raw["reset"].requests == 1  # and nothing was sent again


def test_a_request_written_to_an_upstream_is_never_sent_there_again(gw: Gateway) -> None:
    """The upstream reads the request and closes unanswered: the next deployment answers instead."""
    written, spare = gw.raw["written"], gw.up["spare_written"]
    answers = [_ask(gw, "written", 0) for _ in range(4)]
    # Round-robin: the first answer comes from the raw upstream; the third request reached it on the
    # same (reused) connection, which it closed unanswered, and went on to the spare.
    assert answers == [RAW_TEXT, TEXT, TEXT, TEXT]
    assert (written.requests, written.connections, spare.hits) == (2, 1, 3)


# ---------------------------------------------------------------------- slow upstreams


def test_a_drip_slower_than_the_timeout_ends_the_stream_and_closes_the_upstream(gw: Gateway) -> None:
    stall = gw.up["stall"]
    content = _ends_with_one_error(_stream_payloads(gw, "stall"), "upstream_timeout")
    assert content == list(PIECES[:2])
    assert _wait_for(lambda: stall.streams_closed_early == 1)  # the gateway hung up on it


def test_a_drip_within_the_timeout_completes_however_long_it_takes(gw: Gateway) -> None:
    started = time.monotonic()
    payloads = _stream_payloads(gw, "drip")
    assert time.monotonic() - started > 1.0  # longer than the deployment's timeout in all
    assert payloads[-1] == "[DONE]" and not any("error" in json.loads(p) for p in payloads[:-1])
    chunks = [json.loads(p)["choices"][0] for p in payloads[:-1]]
    assert "".join(c["delta"].get("content") or "" for c in chunks) == TEXT
    assert chunks[-1]["finish_reason"] == "stop"


# ---------------------------------------------------------------------- status faults


def test_a_429_storm_passes_retry_after_through(gw: Gateway) -> None:
    def one(i: int) -> httpx.Response:
        with gw.http() as http:
            return _post(http, "storm", stream=bool(i % 2))

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(one, range(STORM)))
    for r in replies:
        assert r.status_code == 429
        assert r.headers["retry-after"] == RETRY_AFTER
        assert r.json()["error"]["type"] == "rate_limit_error"
    # Every request asked each deployment exactly once: no retry storm behind the client's back.
    assert gw.up["storm_a"].hits == gw.up["storm_b"].hits == STORM
    with gw.http() as http:
        assert http.get("/health").status_code == 200

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: _ask(gw, "storm-spare", i), range(STORM)))
    assert answers == [TEXT] * STORM
    assert gw.up["storm_c"].hits < STORM  # left out once it answered 429


def test_an_answer_that_is_not_sse_fails_over_or_is_a_502(gw: Gateway) -> None:
    with gw.http() as http:
        r = _post(http, "not-sse", stream=True)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_protocol_error"
    assert [_ask(gw, "not-sse-spare", 1) for _ in range(4)] == [TEXT] * 4
    assert gw.up["not_sse_b"].hits == 1


@pytest.mark.parametrize("bad", ["auth401", "auth403"])
def test_a_refused_key_on_one_of_two_deployments_fails_no_request(gw: Gateway, bad: str) -> None:
    good = bad.replace("auth", "good")
    answers = [_ask(gw, bad, i) for i in range(8)]
    assert answers == [TEXT] * 8
    assert gw.up[bad].hits == 1 and gw.up[good].hits == 8  # the bad one cooled down after one try
    assert gw.up[bad].keys == [f"Bearer {KEYS[bad]}"] and set(gw.up[good].keys) == {f"Bearer {KEYS[good]}"}
    log = gw.server.log
    assert "failed before its first byte, cooling down" in log
    assert KEYS[bad] not in log


def test_a_refused_key_everywhere_is_a_502_without_the_key(gw: Gateway) -> None:
    key = KEYS["auth_only"]
    with gw.http() as http:
        replies = [_post(http, "auth-only", stream=stream) for stream in (False, True)]
    for r in replies:
        assert r.status_code == 502  # the gateway's key is wrong, not the client's: no 401
        error = r.json()["error"]
        assert error["code"] == "upstream_auth_failed" and error["type"] == "upstream_error"
        assert "[redacted]" in error["message"] and "(401)" in error["message"]
        assert key not in r.text
    assert key not in gw.server.log
