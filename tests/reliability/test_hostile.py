"""Malformed and hostile requests: each gets a 4xx in OpenAI's error envelope, never a 5xx, 422 or hang."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import RunningServer, running_server

MAX_BODY_MIB = 1
HEADER_TIMEOUT = 2.0
USER = {"role": "user", "content": "Hi."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    args = ("--max-body-mib", str(MAX_BODY_MIB), "--header-timeout", str(HEADER_TIMEOUT))
    with running_server(*args, tmp=tmp_path_factory.mktemp("hostile")) as s:
        yield s


@dataclass
class Case:
    name: str
    method: str = "POST"
    path: str = "/v1/chat/completions"
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


def chat(name: str, **fields: Any) -> Case:
    body = {"model": "gpt-3.5-turbo", "messages": [USER], "max_tokens": 4, **fields}
    return Case(name, content=json.dumps(body).encode())


def post(name: str, path: str, body: Any) -> Case:
    return Case(name, path=path, content=json.dumps(body).encode())


def raw_json(name: str, text: str, path: str = "/v1/chat/completions") -> Case:
    return Case(name, path=path, content=text.encode("utf-8", "surrogatepass"))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def tool_history(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    return [USER, *messages]


CASES = [
    # Not JSON, or not the JSON we need.
    raw_json("not json", "{oops"),
    raw_json("empty body", ""),
    raw_json("json array", "[1, 2]"),
    raw_json("json string", '"text"'),
    raw_json("json null", "null"),
    raw_json("truncated json", '{"model": "gpt-4", "messages": ['),
    raw_json("trailing garbage", '{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]} x'),
    raw_json("NaN literal", '{"model": "gpt-4", "messages": [], "temperature": NaN}'),
    raw_json("duplicate keys, last wrong", '{"model": "gpt-4", "model": 5, "messages": []}'),
    Case(
        "invalid utf-8", content=b'{"model": "gpt-4", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    ),
    Case("utf-16 body", content=json.dumps({"model": "gpt-4", "messages": [USER]}).encode("utf-16")),
    raw_json("lone surrogate", '{"model": "gpt-4", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    # Deep nesting.
    raw_json("deeply nested body", nested(100_000)),
    raw_json("deeply nested extra field", '{"model": "gpt-4", "messages": [], "x": ' + nested(50_000) + "}"),
    raw_json(
        "deeply nested content",
        '{"model": "gpt-4", "messages": [{"role": "user", "content": ' + nested(5000) + "}]}",
    ),
    # Wrong types and huge numbers.
    chat("model is a number", model=42),
    chat("model is empty", model=""),
    chat("model is very long", model="m" * 100_000),
    chat("messages is an object", messages={"role": "user"}),
    chat("message is a string", messages=["hello"]),
    chat("unknown role", messages=[{"role": "wizard", "content": "hi"}]),
    chat("content is a number", messages=[{"role": "user", "content": 42}]),
    chat("unknown content part", messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
    raw_json(
        "temperature overflows",
        '{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
    ),
    chat("max_tokens huge", max_tokens=10**30),
    chat("max_tokens negative", max_tokens=-1),
    chat("max_tokens is a string", max_tokens="10"),
    chat("n huge", n=10**6),
    chat("n zero", n=0),
    chat("seed huge", seed=2**80),
    chat("logit_bias huge token", logit_bias={"99999999999999999999": 1}),
    chat("logit_bias bias out of range", logit_bias={"1": 1000}),
    chat("stop has too many strings", stop=[str(i) for i in range(17)]),
    chat("stop holds a number", stop=["a", 5]),
    chat("top_p out of range", top_p=7),
    chat("stream is a string", stream="yes"),
    chat("stream_options without stream", stream_options={"include_usage": True}),
    chat("top_logprobs without logprobs", top_logprobs=3),
    chat("top_logprobs too many", logprobs=True, top_logprobs=21),
    chat("tools is an object", tools={"type": "function"}),
    chat("tool name with spaces", tools=[{"type": "function", "function": {"name": "bad name"}}]),
    chat("tool_choice names no tool", tool_choice={"type": "function", "function": {"name": "f"}}),
    chat("json_schema without schema", response_format={"type": "json_schema"}),
    chat(
        "json_schema that is not a schema",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": 5}},
        },
    ),
    chat("response_format unknown type", response_format={"type": "yaml"}),
    # Tool history shapes.
    chat("tool message without tool_call_id", messages=tool_history({"role": "tool", "content": "42"})),
    chat(
        "tool call function is a string",
        messages=tool_history(
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": "f()"}]}
        ),
    ),
    chat(
        "tool call without function",
        messages=tool_history({"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}),
    ),
    chat(
        "tool call arguments are an object",
        messages=tool_history(
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}
        ),
    ),
    chat("tool_calls is an object", messages=tool_history({"role": "assistant", "tool_calls": {"id": "c"}})),
    chat("function message without name", messages=tool_history({"role": "function", "content": "x"})),
    # Other endpoints.
    post(
        "completion prompt ids outside the vocabulary",
        "/v1/completions",
        {"model": "gpt-4", "prompt": [10**9]},
    ),
    post("completion prompt is empty", "/v1/completions", {"model": "gpt-4", "prompt": []}),
    post("completion prompt is two strings", "/v1/completions", {"model": "gpt-4", "prompt": ["a", "b"]}),
    post("completion echo is a string", "/v1/completions", {"model": "gpt-4", "prompt": "a", "echo": "yes"}),
    post("embedding input is empty", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ""}),
    post("embedding input is a number", "/v1/embeddings", {"model": "text-embedding-3-small", "input": 5}),
    post(
        "embedding dimensions zero",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "a", "dimensions": 0},
    ),
    post(
        "embedding format unknown",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"},
    ),
    post(
        "response with previous_response_id",
        "/v1/responses",
        {"model": "gpt-4", "input": "a", "previous_response_id": "r"},
    ),
    post("response input is a number", "/v1/responses", {"model": "gpt-4", "input": 5}),
    # Content types.
    Case(
        "form body",
        content=b"model=gpt-4&messages=hi",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "multipart body",
        content=b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\ngpt-4\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    ),
    Case("plain text body", content=b"hello there", headers={"content-type": "text/plain"}),
    Case("binary body", content=bytes(range(256)) * 4, headers={"content-type": "application/octet-stream"}),
    # Bodies over the limit, declared and chunked.
    Case("body over the limit", content=b" " * (MAX_BODY_MIB * 2**20 + 1)),
    # Unknown routes and methods.
    Case("GET on a POST route", method="GET", content=None),
    Case("PUT on a POST route", method="PUT"),
    Case("DELETE models", method="DELETE", path="/v1/models", content=None),
    Case("unknown route", path="/v1/nothing"),
    Case("unknown version", path="/v2/chat/completions"),
    Case("path traversal", method="GET", path="/v1/../../etc/passwd", content=None),
    Case("unknown model id", method="GET", path="/v1/models/" + "x" * 5000, content=None),
    Case("percent-encoded garbage", method="GET", path="/v1/%ff%fe%00", content=None),
]


def _check_envelope(status: int, body: bytes, name: str) -> None:
    assert 400 <= status < 500 and status != 422, (name, status, body[:300])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, (name, err)
    assert isinstance(err["message"], str) and err["message"], (name, err)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) + len(RAW_CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_a_4xx_envelope(server: RunningServer, case: Case) -> None:
    with server.http(timeout=60) as http:
        r = http.request(case.method, case.path, content=case.content, headers=case.headers)
    _check_envelope(r.status_code, r.content, case.name)


def test_chunked_body_over_the_limit_is_413(server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_MIB * 4):
            yield b" " * (2**20 // 2)

    with server.http(timeout=60) as http:
        r = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    _check_envelope(r.status_code, r.content, "chunked body")


def _raw(server: RunningServer, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status and body of the answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEADER_TIMEOUT + 30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


RAW_CASES = [
    ("garbage request line", b"HELLO\r\n\r\n"),
    (
        "content-length not a number",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    ),
    (
        "content-length and chunked",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("control character in a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n"),
    ("header without a colon", b"GET /health HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n"),
    (
        "headers over 64 KiB",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    ),
    (
        "declared body over the limit",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{",
    ),
]


@pytest.mark.parametrize(("name", "data"), RAW_CASES, ids=[n for n, _ in RAW_CASES])
def test_hostile_http_is_a_4xx_envelope(server: RunningServer, name: str, data: bytes) -> None:
    status, body = _raw(server, data)
    _check_envelope(status, body, name)


def test_stalled_connections_are_closed_at_the_header_timeout(server: RunningServer) -> None:
    started = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:  # half send part of a request, half nothing at all
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
        for sock in socks:
            sock.settimeout(HEADER_TIMEOUT + 30)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            assert received.startswith(b"HTTP/1.1 408 "), received[:100]
            _check_envelope(408, received.partition(b"\r\n\r\n")[2], "stalled")
    finally:
        for sock in socks:
            sock.close()
    # Every one was closed by the server, none before its allowance.
    assert time.monotonic() - started >= HEADER_TIMEOUT


def test_clients_leaving_mid_body_are_a_quiet_400(server: RunningServer) -> None:
    def refused() -> int:
        return server.log.count('"POST /v1/chat/completions" 400')

    before = refused()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head + b'Content-Length: 5000\r\n\r\n{"model": "gpt-4", "messages": [')
            time.sleep(0.05)  # the server is reading the body when the client goes
    deadline = time.monotonic() + 10
    while refused() < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused() == before + 5, server.log[-2000:]
    assert "Traceback" not in server.log


def test_server_is_healthy_afterwards(server: RunningServer) -> None:
    with server.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        r = http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [USER], "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert "Traceback" not in server.log
