"""Upstream OpenAI-compatible deployments (vLLM, SGLang, Ollama, llama-server, OpenAI) over HTTP.

Every upstream deployment shares one keep-alive ``httpx.AsyncClient`` (``UpstreamPool``). Failures
are translated here, at the boundary, so that the router decides by type alone ("fail over": before
the first delta the next deployment is tried and this one cools down; after it the stream ends with
an error event and this one cools down; "surface": the client gets the error, no cooldown):

    connection refused, DNS failure          -> UpstreamConnectError   fail over
    connect or read timeout (a slow drip)    -> UpstreamTimeout        fail over
    closed or reset before any response byte -> UpstreamProtocolError  fail over (never re-sent to this
                                                                       deployment: see http1.py)
    reset or cut short mid-body              -> UpstreamProtocolError  fail over
    malformed JSON or SSE, no [DONE]         -> UpstreamProtocolError  fail over
    status 401 or 403 (the deployment's key) -> UpstreamAuthError      fail over; 502 when none is left
    status 429 or 5xx                        -> UpstreamStatusError    fail over; the client gets the
                                                                       status and Retry-After when none
                                                                       is left
    other 4xx                                -> UpstreamStatusError    surface: the request's fault,
                                                                       passed through as is

A streamed request is forwarded as a stream and each upstream event becomes deltas as it arrives. A
non-streamed request is forwarded non-streamed and its JSON body becomes one delta per choice: the
upstream then applies its own non-stream semantics (usage always present, no ``stream_options``
needed, which older servers reject), and we parse one body instead of one event per token.

The deployment's key goes only into its own requests' ``Authorization`` header and is scrubbed from
anything the upstream sends back, so it never reaches a client or a log line.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel

from .. import __version__
from ..errors import (
    InvalidRequest,
    UpstreamAuthError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    SamplingFields,
    WireModel,
)
from ..settings import UpstreamDeployment
from .base import Delta, Embeddings, Provider, TokenUsage, chat_from_messages
from .http1 import Http1Transport
from .sse import SSEDecoder
from .upstream_embeddings import embeddings_from_body

__all__ = ["UpstreamPool", "UpstreamProvider"]

# No cap on connections: admission is the upstream's job (it answers 429), and a local pool limit
# would turn our own queueing into timeouts that put a healthy upstream in cooldown.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=30.0)
_ERROR_BODY_LIMIT = 64 * 1024
_REDACTED = "[redacted]"

Kind = Literal["chat", "text"]


class UpstreamPool:
    """The one ``httpx.AsyncClient`` of all upstream deployments; closed when its last user lets go."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport  # tests plug in byte-level faults here
        self._client: httpx.AsyncClient | None = None
        self._users = 0

    def acquire(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = self._transport or _transport()
            self._client = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False, transport=transport)
        self._users += 1
        return self._client

    async def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _transport() -> httpx.AsyncBaseTransport | None:
    """The lean HTTP/1.1 transport in front of httpx's own, unless the environment names a proxy.

    None lets httpx build its default transport, which honours ``HTTP_PROXY`` and friends.
    """
    if urllib.request.getproxies():
        return None
    return Http1Transport(fallback=httpx.AsyncHTTPTransport(limits=_LIMITS))


class UpstreamProvider(Provider):
    """One OpenAI-compatible endpoint; requests are forwarded with the model name replaced."""

    def __init__(self, deployment: UpstreamDeployment, *, pool: UpstreamPool) -> None:
        url = httpx.URL(deployment.base_url)
        # netloc carries no user info, so credentials in the URL stay out of logs.
        self.name = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
        # Parsed once: httpx would parse a string URL again on every request.
        self._urls = {
            "chat": httpx.URL(f"{deployment.base_url}/chat/completions"),
            "text": httpx.URL(f"{deployment.base_url}/completions"),
            "embeddings": httpx.URL(f"{deployment.base_url}/embeddings"),
            # vLLM and SGLang serve /tokenize at the root, beside /v1.
            "tokenize": httpx.URL(f"{deployment.base_url.removesuffix('/v1')}/tokenize"),
        }
        self._secret = deployment.api_key.get_secret_value() if deployment.api_key else ""
        self._headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                         "User-Agent": f"interference/{__version__}"}  # fmt: skip
        if self._secret:
            self._headers["Authorization"] = f"Bearer {self._secret}"
        timeout = httpx.Timeout(deployment.timeout, connect=deployment.connect_timeout)
        self._extensions = {"timeout": timeout.as_dict()}
        self._pool = pool
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = self._pool.acquire()

    async def aclose(self) -> None:
        if self._client is not None:
            self._client = None
            await self._pool.release()

    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._iter_deltas(request, model, "chat")

    def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._iter_deltas(request, model, "text")

    async def embed(self, request: EmbeddingRequest, *, model: str) -> Embeddings:
        """Forward the request as the client sent it (model replaced); base64 answers are decoded too."""
        upstream_request = self._request("embeddings", request, model)
        assert self._client is not None
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                raw = await response.aread()
            finally:
                await response.aclose()
        return embeddings_from_body(_loads(raw), expected=len(request.inputs))

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        """The prompt's size from the upstream's ``/tokenize`` (vLLM, SGLang): its own chat template."""
        chat = chat_from_messages(request)
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump(exclude_unset=True) for m in chat.messages],
            "add_generation_prompt": True,
        }
        if chat.tools:
            body["tools"] = [t.model_dump(exclude_unset=True) for t in chat.tools]
        assert self._client is not None
        upstream_request = httpx.Request(
            "POST", self._urls["tokenize"], content=orjson.dumps(body), headers=self._headers,
            extensions=self._extensions,
        )  # fmt: skip
        # A missing or different /tokenize (llama-server's takes "content") is no fault of the upstream's:
        # a 400 that says so, and no cooldown for a deployment that serves chat well.
        unsupported = InvalidRequest(
            f"The model '{request.model}' cannot count tokens: its upstream has no chat /tokenize endpoint "
            "(vLLM and SGLang have one).",
            param="model",
        )
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise unsupported
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                raw = await response.aread()
            finally:
                await response.aclose()
        try:
            result = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise unsupported from None
        count = result.get("count") if isinstance(result, dict) else None
        if not isinstance(count, int):
            raise unsupported
        return count

    # ------------------------------------------------------------------ the call

    def _request(self, kind: str, request: BaseModel, model: str) -> httpx.Request:
        """The upstream call: the client's fields as sent (extras included), ``model`` replaced."""
        if self._client is None:
            raise RuntimeError(f"upstream {self.name} used before start()")
        wire = request.wire_body() if isinstance(request, WireModel) else None
        # The JSON as sent, when it was kept: dumping the models again costs as much as parsing them.
        body = wire if wire is not None else request.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = model
        # A ready Request skips the client's per-call merging of URL, headers and cookies (a third of
        # its cost); the client still sends it, and the response is closed in ``finally``.
        return httpx.Request(
            "POST",
            self._urls[kind],
            content=orjson.dumps(body),
            headers=self._headers,
            extensions=self._extensions,
        )

    async def _iter_deltas(self, request: SamplingFields, model: str, kind: Kind) -> AsyncIterator[Delta]:
        upstream_request = self._request(kind, request, model)
        assert self._client is not None
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                content_type = response.headers.get("content-type", "")
                if request.stream and not content_type.startswith("application/json"):
                    async for delta in self._iter_events(response, kind):
                        yield delta
                else:
                    for delta in _whole_deltas(_loads(await response.aread()), kind):
                        yield delta
            finally:
                await response.aclose()

    async def _iter_events(self, response: httpx.Response, kind: Kind) -> AsyncIterator[Delta]:
        decoder = SSEDecoder()
        events = _EventStream(kind, redact=self._redact)
        async for chunk in response.aiter_bytes():
            for data in decoder.decode(chunk):
                for delta in events.feed(data):
                    yield delta
        for data in decoder.flush():
            for delta in events.feed(data):
                yield delta
        for delta in events.end():
            yield delta

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"The upstream server did not answer in time ({type(exc).__name__})."
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamConnectError("Could not connect to the upstream server.") from exc
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(
                f"The connection to the upstream server broke ({type(exc).__name__})."
            ) from exc

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, _REDACTED) if self._secret else text

    async def _status_error(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        raw = bytearray()
        async for chunk in response.aiter_bytes():
            raw += chunk
            if len(raw) >= _ERROR_BODY_LIMIT:
                break
        if status < 400:
            return UpstreamProtocolError(f"The upstream server answered with unexpected status {status}.")
        text = self._redact(raw[:_ERROR_BODY_LIMIT].decode("utf-8", "replace"))
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            body = None
        error = _error_object(body)
        message = (
            _str(error.get("message")) or text.strip()[:500] or f"The upstream server answered {status}."
        )
        if status in (401, 403):
            return UpstreamAuthError(status, message)
        exc = UpstreamStatusError(
            status,
            message,
            body=body if isinstance(body, dict) else None,
            retry_after=_retry_after(response.headers),
        )
        if status == 429:
            exc.type = "rate_limit_error"
        elif not exc.retryable:
            # The request's own fault: the client sees the upstream's error as the upstream wrote it.
            exc.type = _str(error.get("type")) or exc.type
            exc.param = _str(error.get("param"))
            exc.code = _str(error.get("code"))
        return exc


# ---------------------------------------------------------------------- parsing


class _EventStream:
    """Upstream SSE payloads to deltas; notices a stream that ends before it finished."""

    __slots__ = ("_done", "_finished", "_kind", "_redact", "_seen", "_usage")

    def __init__(self, kind: Kind, *, redact: Callable[[str], str]) -> None:
        self._kind: Kind = kind
        self._redact = redact
        self._done = False
        self._seen: set[int] = set()
        self._finished: set[int] = set()
        self._usage: TokenUsage | None = None

    def feed(self, data: str) -> list[Delta]:
        if self._done:
            return []  # nothing counts after [DONE]; the body is still drained so the connection is reused
        if data == "[DONE]":
            self._done = True
            return []
        chunk = _loads(data)
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed event.")
        if chunk.get("error") and not chunk.get("choices"):
            raise _event_error(chunk["error"], self._redact)
        # Usage may come on every chunk (cumulative, vLLM's continuous_usage_stats) or once at the
        # end; the last one seen is the total, sent once when the stream ends.
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        deltas = []
        for choice in _list(chunk.get("choices")):
            delta = _choice_delta(choice, self._kind, is_chunk=True)
            self._seen.add(delta.index)
            if delta.finish_reason is not None:
                self._finished.add(delta.index)
            if delta.text or delta.reasoning or delta.tool_calls or delta.logprobs or delta.finish_reason:
                deltas.append(delta)
        return deltas

    def end(self) -> list[Delta]:
        if not self._done and (not self._seen or self._seen - self._finished):
            raise UpstreamProtocolError("The upstream server ended the stream before it finished.")
        return [Delta(usage=self._usage)] if self._usage is not None else []


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("The upstream server sent a malformed response.") from None


def _whole_deltas(body: Any, kind: Kind) -> list[Delta]:
    if not isinstance(body, dict):
        raise UpstreamProtocolError("The upstream server sent a malformed response.")
    deltas = [_choice_delta(choice, kind, is_chunk=False) for choice in _list(body.get("choices"))]
    usage = _usage(body.get("usage"))
    if usage is not None:
        deltas.append(Delta(usage=usage))
    return deltas


def _choice_delta(choice: Any, kind: Kind, *, is_chunk: bool) -> Delta:
    if not isinstance(choice, dict):
        raise UpstreamProtocolError("The upstream server sent a malformed choice.")
    index = choice.get("index", 0)
    if not isinstance(index, int):
        raise UpstreamProtocolError("The upstream server sent a malformed choice index.")
    tool_calls: tuple[dict[str, Any], ...] | None = None
    reasoning: Any = None
    if kind == "text":
        text = choice.get("text")
    else:
        message = choice.get("delta" if is_chunk else "message") or {}
        if not isinstance(message, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed message.")
        text = message.get("content")
        # vLLM, SGLang, DeepSeek and llama-server say reasoning_content; Ollama and OpenRouter, reasoning.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        calls = message.get("tool_calls")
        if calls:
            # Whole messages carry no per-call index; streamed ones do. Deltas always carry it.
            tool_calls = tuple(
                call if is_chunk else {"index": i, **call}
                for i, call in enumerate(_list(calls))
                if isinstance(call, dict)
            )
    if text is not None and not isinstance(text, str):
        raise UpstreamProtocolError("The upstream server sent malformed content.")
    logprobs = choice.get("logprobs")
    finish = choice.get("finish_reason")
    return Delta(
        text=text or "",
        index=index,
        finish_reason=finish if isinstance(finish, str) else None,
        tool_calls=tool_calls or None,
        logprobs=logprobs if isinstance(logprobs, dict) and logprobs else None,
        reasoning=reasoning if isinstance(reasoning, str) else "",
    )


def _usage(obj: Any) -> TokenUsage | None:
    if not isinstance(obj, dict):
        return None
    details = obj.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return TokenUsage(_int(obj.get("prompt_tokens")), _int(obj.get("completion_tokens")), _int(cached))


def _event_error(error: Any, redact: Callable[[str], str]) -> UpstreamError:
    """An error event inside a 200 stream (vLLM sends these); a 4xx code there is the request's fault."""
    obj = error if isinstance(error, dict) else {"message": str(error)}
    message = redact(_str(obj.get("message")) or "The upstream server reported an error.")
    code = obj.get("code")
    if code in (401, 403):
        return UpstreamAuthError(code, message)
    if isinstance(code, int) and 400 <= code < 500 and code != 429:
        return UpstreamStatusError(code, message)
    return UpstreamError(message)


def _retry_after(headers: httpx.Headers) -> float | None:
    """The upstream's ``Retry-After`` in seconds (delta-seconds or an HTTP date; OpenAI's ``-ms`` first)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _error_object(body: Any) -> dict[str, Any]:
    """The ``error`` object of an error body in the shapes servers use (OpenAI, Ollama, FastAPI)."""
    if not isinstance(body, dict):
        return {}
    error = body.get("error", body)
    if isinstance(error, str):
        return {"message": error}
    if isinstance(error, dict):
        if "message" not in error and isinstance(body.get("detail"), str):
            return {**error, "message": body["detail"]}
        return error
    return {}


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UpstreamProtocolError("The upstream server sent a malformed response.")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
