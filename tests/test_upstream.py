"""UpstreamProvider at the byte level: torn and cut streams, odd events, error mapping, key hygiene.

The real-HTTP behaviour is covered in test_gateway.py; these faults need exact bytes, so they use
``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from interference.errors import (
    UpstreamAuthError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from interference.protocol import ChatCompletionRequest, CompletionRequest, MessagesRequest
from interference.protocol.wire import with_model
from interference.providers.base import Delta, chat_from_messages
from interference.providers.upstream import UpstreamPool, UpstreamProvider
from interference.settings import OpenAIDeployment

KEY = "sk-secret-123456789"
Handler = Callable[[httpx.Request], httpx.Response]


class Body(httpx.AsyncByteStream):
    """Response bytes in the given pieces, then optionally a transport error (a torn connection)."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.pieces, self.error = pieces, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.error is not None:
            raise self.error


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n" for e in events
    )


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def stream_response(body: bytes | Body, content_type: str = "text/event-stream") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        stream = body if isinstance(body, Body) else Body([body])
        return httpx.Response(200, headers={"content-type": content_type}, stream=stream)

    return handler


def chat(stream: bool = True, **extra: Any) -> ChatCompletionRequest:
    payload = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    return ChatCompletionRequest.model_validate_json(orjson.dumps(payload))


async def collect(handler: Handler, request: ChatCompletionRequest | None = None) -> list[Delta]:
    provider, _ = _provider(handler)
    await provider.start()
    try:
        return [d async for d in provider.chat(request or chat(), model="upstream-name")]
    finally:
        await provider.aclose()


def _provider(
    handler: Handler, base_url: str = "http://upstream.test/v1"
) -> tuple[UpstreamProvider, UpstreamPool]:
    pool = UpstreamPool(transport=httpx.MockTransport(handler))
    deployment = OpenAIDeployment(base_url=base_url, api_key=SecretStr(KEY), timeout=5)
    return UpstreamProvider(deployment, pool=pool), pool


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------- streams


def test_stream_split_anywhere_gives_the_same_deltas() -> None:
    body = sse(
        chunk("", role="assistant"),
        chunk("Hé"),
        chunk("llo"),
        chunk(finish="stop"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 1},
            },
        },
        "[DONE]",
    )
    whole = run(collect(stream_response(body)))
    assert [(d.text, d.finish_reason) for d in whole[:3]] == [("Hé", None), ("llo", None), ("", "stop")]
    assert whole[-1].usage is not None and (whole[-1].usage.prompt_tokens, whole[-1].usage.cached_tokens) == (
        3,
        1,
    )
    for size in (1, 2, 3, 7):
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        assert run(collect(stream_response(Body(pieces)))) == whole


def test_torn_connection_mid_stream_raises_after_the_deltas_it_got() -> None:
    body = Body([sse(chunk("a"), chunk("b"))], error=httpx.ReadError("connection reset"))

    async def scenario() -> list[str]:
        got: list[str] = []
        with pytest.raises(UpstreamProtocolError) as info:
            provider, _ = _provider(stream_response(body))
            await provider.start()
            async for delta in provider.chat(chat(), model="m"):
                got.append(delta.text)
        assert info.value.retryable and isinstance(info.value.__cause__, httpx.ReadError)
        return got

    assert run(scenario()) == ["a", "b"]


def test_clean_eof_before_the_end_is_a_cut_not_a_finish() -> None:
    with pytest.raises(UpstreamProtocolError, match="ended the stream"):
        run(collect(stream_response(sse(chunk("a")))))
    # Servers that skip [DONE] but finished every choice are fine.
    assert [d.text for d in run(collect(stream_response(sse(chunk("a"), chunk(finish="stop")))))] == ["a", ""]


def test_garbage_and_malformed_events() -> None:
    for body in (
        b"data: {not json\n\n",
        sse("[1, 2]"),
        sse({"choices": "x"}),
        sse({"choices": [{"delta": 5}]}),
        sse(chunk(content=None, finish=None) | {"choices": [{"delta": {"content": 42}}]}),
    ):
        with pytest.raises(UpstreamProtocolError):
            run(collect(stream_response(body)))


def test_cumulative_usage_is_sent_once_at_the_end() -> None:
    def usage(n: int) -> dict[str, int]:
        return {"prompt_tokens": 5, "completion_tokens": n}

    body = sse(
        chunk("a", usage=usage(1)), chunk("b", usage=usage(2)), chunk(finish="stop", usage=usage(2)), "[DONE]"
    )
    deltas = run(collect(stream_response(body)))
    assert [d.usage for d in deltas[:-1]] == [None, None, None]
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 2


def test_error_events_inside_a_stream() -> None:
    with pytest.raises(UpstreamStatusError) as bad:
        run(collect(stream_response(sse({"error": {"message": f"bad {KEY}", "code": 400}}))))
    assert bad.value.status == 400 and not bad.value.retryable and KEY not in bad.value.message
    with pytest.raises(UpstreamError) as crash:
        run(collect(stream_response(sse(chunk("a"), {"error": {"message": "engine died"}}))))
    assert crash.value.retryable and crash.value.message == "engine died"


def test_a_json_answer_to_a_stream_request_is_taken_whole() -> None:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": "whole"}, "finish_reason": "stop"}]})
    deltas = run(collect(stream_response(body, content_type="application/json")))
    assert [(d.text, d.finish_reason) for d in deltas] == [("whole", "stop")]


# ---------------------------------------------------------------------- requests and errors


def test_forwarded_request_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            },
        )

    async def scenario() -> list[Delta]:
        provider, _ = _provider(handler)
        await provider.start()
        request = CompletionRequest.model_validate_json(b'{"model": "public", "prompt": "p", "best_of": 2}')
        deltas = [d async for d in provider.complete(request, model="upstream-name")]
        await provider.aclose()
        return deltas

    deltas = run(scenario())
    assert [d.text for d in deltas] == ["x", ""] and deltas[-1].usage is not None
    (request,) = seen
    assert str(request.url) == "http://upstream.test/v1/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert orjson.loads(request.content) == {"model": "upstream-name", "prompt": "p", "best_of": 2}


def _forwarded(requests: list[ChatCompletionRequest], model: str) -> list[bytes]:
    """The bodies an upstream receives for ``requests`` sent as chat completions to ``model``."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [choice]})

    async def scenario() -> None:
        provider, _ = _provider(handler)
        await provider.start()
        for request in requests:
            [d async for d in provider.chat(request, model=model)]
        await provider.aclose()

    run(scenario())
    return seen


def test_a_parsed_request_is_forwarded_as_sent_and_a_translated_one_as_translated() -> None:
    """The JSON as sent (extras, key order, an integer for a float) or the Messages translation,
    with the model replaced; the client's own object is not changed by it."""
    raw = (
        b'{"temperature": 1, "messages": [{"role": "user", "content": "hi", "x_note": [1, 2]}],'
        b' "model": "public", "x_vendor": {"k": true}, "tools": [{"type": "function", "function":'
        b' {"name": "f", "parameters": {"$schema": "s", "type": "object"}}}]}'
    )
    chat = ChatCompletionRequest.model_validate_json(raw)
    chat.set_wire_body(raw)
    messages = MessagesRequest.model_validate_json(
        b'{"model": "public", "max_tokens": 5, "system": "be brief", "temperature": 0.5,'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'
    )
    translated = chat_from_messages(messages)
    seen = _forwarded([chat, translated], "upstream-name")
    assert [orjson.loads(body) for body in seen] == [
        {**orjson.loads(raw), "model": "upstream-name"},
        {
            "model": "upstream-name",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "temperature": 0.5,
        },
    ]
    assert list(orjson.loads(seen[0])) == ["temperature", "messages", "model", "x_vendor", "tools"]
    assert chat.wire_body() == orjson.loads(raw) and translated.model == "public"


@pytest.mark.parametrize(
    ("status", "body", "retryable", "message"),
    [
        (
            400,
            {
                "error": {
                    "message": "too long",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            False,
            "too long",
        ),
        (404, {"detail": "Not Found"}, False, "Not Found"),
        (422, {"error": "model 'x' not found"}, False, "model 'x' not found"),
        (429, {"error": {"message": "slow down"}}, True, "slow down"),
        (500, b"<html>Internal Server Error</html>", True, "<html>Internal Server Error</html>"),
        (503, b"", True, "The upstream server answered 503."),
    ],
)
def test_status_errors(status: int, body: dict[str, Any] | bytes, retryable: bool, message: str) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(UpstreamStatusError) as info:
        run(collect(lambda _: httpx.Response(status, content=content), chat(stream=False)))
    exc = info.value
    assert (exc.status, exc.retryable, exc.message) == (status, retryable, message)
    if status == 400:
        assert (exc.type, exc.param, exc.code) == (
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        )
    if status == 429:
        assert exc.type == "rate_limit_error"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_auth_error_with_the_key_scrubbed(status: int) -> None:
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {KEY}", "key": KEY}})
    with pytest.raises(UpstreamAuthError) as info:
        run(collect(lambda _: httpx.Response(status, content=body)))
    exc = info.value
    assert (exc.status, exc.upstream_status, exc.retryable, exc.code) == (
        502,
        status,
        True,
        "upstream_auth_failed",
    )
    assert KEY not in exc.message and "[redacted]" in exc.message


def test_the_key_is_scrubbed_from_error_bodies() -> None:
    body = orjson.dumps({"error": {"message": f"failed while checking {KEY}", "key": KEY}})
    with pytest.raises(UpstreamStatusError) as info:
        run(collect(lambda _: httpx.Response(500, content=body)))
    assert (
        KEY not in info.value.message
        and KEY not in str(info.value.body)
        and "[redacted]" in info.value.message
    )


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),  # OpenAI's finer header wins
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: now
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_comes_with_the_status_error(headers: dict[str, str], seconds: float | None) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        run(collect(lambda _: httpx.Response(429, headers=headers, content=b"{}")))
    assert info.value.retry_after == seconds


def test_transport_errors_map_to_upstream_errors() -> None:
    def fail(exc: Exception) -> Handler:
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc

        return handler

    cases: list[tuple[Exception, type[UpstreamError]]] = [
        (httpx.ConnectError("refused"), UpstreamConnectError),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
        (httpx.RemoteProtocolError("bad"), UpstreamProtocolError),
    ]
    for exc, expected in cases:
        with pytest.raises(expected) as info:
            run(collect(fail(exc)))
        assert info.value.retryable and info.value.__cause__ is exc
    with pytest.raises(UpstreamProtocolError, match="unexpected status 302"):
        run(collect(lambda _: httpx.Response(302, headers={"location": "/elsewhere"})))


def test_the_shared_client_is_closed_once_by_its_last_user() -> None:
    async def scenario() -> None:
        pool = UpstreamPool(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
        a = UpstreamProvider(OpenAIDeployment(base_url="http://a.test/v1"), pool=pool)
        b = UpstreamProvider(OpenAIDeployment(base_url="http://b.test/v1"), pool=pool)
        await a.start()
        await b.start()
        assert a._client is b._client and a._client is not None
        client = a._client
        await a.aclose()
        assert not client.is_closed
        await b.aclose()
        await b.aclose()  # idempotent
        assert client.is_closed
        assert a.name == "http://a.test/v1"

    run(scenario())


def test_name_hides_credentials_in_the_url() -> None:
    provider, _ = _provider(lambda _: httpx.Response(200), base_url="https://user:pw@upstream.test:8443/v1")
    assert provider.name == "https://upstream.test:8443/v1"


def test_the_client_s_bytes_are_forwarded_with_only_the_model_s_name_changed() -> None:
    """Kept bytes go out as they came (spacing, escapes, key order, non-ASCII text), the top-level
    model's value replaced; a document where that cannot be done for certain is written anew."""
    kept = (
        b'{"messages":[{"role":"user","content":"caf\\u00e9 \xe2\x80\x94 ok"}],  "model" :  "public" ,"n":1}'
    )
    twice = b'{"model":"public","messages":[{"role":"user","content":"x"}],"metadata":{"model":"m"}}'
    requests = []
    for raw in (kept, twice):
        chat = ChatCompletionRequest.model_validate_json(raw)
        chat.set_wire_body(orjson.loads(raw), raw=raw)
        requests.append(chat)
    seen = _forwarded(requests, 'up"stream')
    assert seen[0] == kept.replace(b'"public"', b'"up\\"stream"')
    assert orjson.loads(seen[1]) == {**orjson.loads(twice), "model": 'up"stream'}


@pytest.mark.parametrize(
    ("raw", "sent", "expected"),
    [
        (b'{"model":"a","x":1}', "a", b'{"model":"b","x":1}'),
        (b'{"x":[1,{"y":"z"}],\n  "model"\t:\r "a"\n}', "a", b'{"x":[1,{"y":"z"}],\n  "model"\t:\r "b"\n}'),
        (
            b'{"x":"say \\"model\\": \\"a\\"","model":"a"}',
            "a",
            b'{"x":"say \\"model\\": \\"a\\"","model":"b"}',
        ),
        (b'{"model":"a\\u0041"}', "aA", b'{"model":"b"}'),
        # A duplicate key: the parser kept the last, and the last member is the one replaced.
        (b'{"model":"a","model":"c"}', "c", b'{"model":"a","model":"b"}'),
        (b' {\n "model" : "a" , "model":"c"}', "a", b' {\n "model" : "b" , "model":"c"}'),
        # "model" twice in the document: found at either end, and not in between.
        (b'{"role":"model","model":"a"}', "a", b'{"role":"model","model":"b"}'),
        (b'{"model":"a","role":"model"}', "a", b'{"model":"b","role":"model"}'),
        (b'{"role":"model","model":"a","x":1}', "a", None),
        (b'{"x":{"model":"a"},"model":"a","y":1}', "a", None),
        # At the end of a nested object, not of the document: not taken for the top-level key.
        (b'{"x":1,"model":"a","y":{"model":"a"}}', "a", None),
        (b'{"model":"a"}', "other", None),  # not the value the request was validated with
        (b'{"model":7}', 7, None),
        (b'{"x":1}', None, None),
    ],
)
def test_with_model(raw: bytes, sent: object, expected: bytes | None) -> None:
    assert with_model(raw, sent, "b") == expected
