"""The wire format seen with raw httpx: SSE framing, both route prefixes, and every error case."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

MESSAGES = [{"role": "user", "content": "Say hello."}]


def _events(response: httpx.Response) -> list[str]:
    body = response.read().decode()
    assert body.endswith("\n\n")
    frames = body.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[len("data: ") :] for f in frames]


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_sse_framing(http: httpx.Client, prefix: str) -> None:
    body = {"model": "gpt-3.5-turbo", "messages": MESSAGES, "max_tokens": 12, "stream": True}
    with http.stream("POST", f"{prefix}/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1


def test_sse_usage_chunk_comes_before_done(http: httpx.Client) -> None:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": MESSAGES,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = _events(r)
    usage = json.loads(events[-2])
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 5


def test_tokens_arrive_one_by_one(http: httpx.Client) -> None:
    """Each token is flushed as its own event, not buffered into one body."""
    body = {
        "model": "gpt-3.5-turbo",
        "messages": MESSAGES,
        "max_tokens": 20,
        "stream": True,
        "temperature": 0,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        reads = [chunk for chunk in r.iter_raw() if chunk]
    assert len(reads) >= 5


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_root_and_v1_routes(http: httpx.Client, prefix: str) -> None:
    assert http.get(f"{prefix}/models").json()["object"] == "list"
    assert http.get(f"{prefix}/models/gpt-4").json()["id"] == "gpt-4"
    r = http.post(f"{prefix}/completions", json={"model": "gpt-4", "prompt": "Hi", "max_tokens": 2})
    assert r.json()["object"] == "text_completion"


def test_health(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": MESSAGES, **fields}


BAD_REQUESTS = [
    ({"model": "gpt-3.5-turbo"}, "messages"),
    (_chat(messages=[]), "messages"),
    (_chat(messages="hello"), "messages"),
    (_chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (_chat(messages=[{"role": "user"}]), "messages[0].content"),
    (_chat(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
    (_chat(temperature=2.5), "temperature"),
    (_chat(temperature=-0.1), "temperature"),
    (_chat(temperature="hot"), "temperature"),
    (_chat(top_p=1.5), "top_p"),
    (_chat(max_tokens=0), "max_tokens"),
    (_chat(max_tokens=-5), "max_tokens"),
    (_chat(max_tokens="ten"), "max_tokens"),
    (_chat(max_completion_tokens=0), "max_completion_tokens"),
    (_chat(stream="yes"), "stream"),
    (_chat(stop=7), "stop"),
    (_chat(presence_penalty=3), "presence_penalty"),
    (_chat(frequency_penalty=-3), "frequency_penalty"),
    (_chat(stream_options={"include_usage": True}), None),
    ({"messages": MESSAGES}, "model"),
    # Tool history: each shape reaches no provider unchecked.
    (_chat(messages=[*MESSAGES, {"role": "tool", "content": "42"}]), "messages[1].tool_call_id"),
    (
        _chat(messages=[*MESSAGES, {"role": "assistant", "tool_calls": [{"id": "c", "function": "f()"}]}]),
        "messages[1].tool_calls[0].function",
    ),
    (
        _chat(messages=[*MESSAGES, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]),
        "messages[1].tool_calls[0].function",
    ),
    (
        _chat(messages=[*MESSAGES, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]),
        "messages[1].tool_calls[0].id",
    ),
    (_chat(messages=[{"role": "function", "content": "x"}]), "messages[0].name"),
    (_chat(messages=["hello"]), "messages[0].role"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS)
def test_invalid_chat_requests_are_400(http: httpx.Client, body: dict[str, Any], param: str | None) -> None:
    err = _error(http.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b'"text"', b'{"model": "gpt-4", "messages": [}']
)
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert _error(r, 400)["type"] == "invalid_request_error"


def test_context_length_exceeded(http: httpx.Client) -> None:
    long = "word " * 9000
    err = _error(
        http.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": long}])), 400
    )
    assert err["code"] == "context_length_exceeded"
    err = _error(http.post("/v1/chat/completions", json=_chat(max_tokens=100_000)), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": long}), 400)
    assert err["code"] == "context_length_exceeded"


def test_context_length_exceeded_before_stream_starts(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=_chat(max_tokens=100_000, stream=True))
    assert _error(r, 400)["code"] == "context_length_exceeded"


def test_unknown_model_404(http: httpx.Client) -> None:
    err = _error(http.post("/v1/chat/completions", json=_chat(model="gpt-9")), 404)
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"
    assert _error(http.get("/v1/models/gpt-9"), 404)["code"] == "model_not_found"
    r = http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x", "stream": True})
    assert _error(r, 404)["code"] == "model_not_found"


def test_unknown_route_404(http: httpx.Client) -> None:
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.post("/v2/chat/completions", json=_chat()), 404)


def test_wrong_method_is_405_in_envelope(http: httpx.Client) -> None:
    _error(http.get("/v1/chat/completions"), 405)


def test_completions_errors(http: httpx.Client) -> None:
    err = _error(http.post("/v1/completions", json={"model": "gpt-4"}), 400)
    assert err["param"] == "prompt"
    err = _error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": ["a", "b"]}), 400)
    assert err["param"] == "prompt"
    err = _error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": [10**9]}), 400)
    assert err["param"] == "prompt"


def test_unsupported_parameters_are_400_naming_them(http: httpx.Client) -> None:
    err = _error(http.post("/v1/chat/completions", json=_chat(logit_bias={"not-a-token": 5})), 400)
    assert err["param"] == "logit_bias"


def test_server_keeps_serving_after_errors(http: httpx.Client) -> None:
    for _ in range(3):
        http.post("/v1/chat/completions", content=b"{oops")
    r = http.post("/v1/chat/completions", json=_chat(max_tokens=3))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] is not None
