"""What every upstream deployment over HTTP shares, whatever API it speaks (OpenAI's, Anthropic's).

All upstream deployments share one keep-alive ``httpx.AsyncClient`` (``UpstreamPool``). ``HttpUpstream``
holds one deployment's URL, key, headers and timeouts, sends its calls and translates their failures
here, at the boundary, so that the router decides by type alone ("fail over": before the first delta
the next deployment is tried and this one cools down; after it the stream ends with an error event and
this one cools down; "surface": the client gets the error, no cooldown):

    connection refused, DNS failure          -> UpstreamConnectError   fail over
    connect or read timeout (a slow drip)    -> UpstreamTimeout        fail over
    closed or reset before any response byte -> UpstreamProtocolError  fail over (never re-sent to this
                                                                       deployment: see http1.py)
    reset or cut short mid-body              -> UpstreamProtocolError  fail over
    malformed JSON or SSE, unfinished stream -> UpstreamProtocolError  fail over
    status 401 or 403 (the deployment's key) -> UpstreamAuthError      fail over; 502 when none is left
    status 429 or 5xx                        -> UpstreamStatusError    fail over; the client gets the
                                                                       status and Retry-After when none
                                                                       is left
    other 4xx                                -> UpstreamStatusError    surface: the request's fault,
                                                                       passed through as is

The deployment's key goes only into its own requests' headers and is scrubbed from anything the
upstream sends back, so it never reaches a client or a log line. The subclasses keep only their wire
format: the URLs, the auth header, the bodies and events they read.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson

from .. import __version__
from ..errors import (
    UpstreamAuthError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from ..settings import UpstreamDeployment
from .base import MessageEvent, Provider
from .http1 import Http1Transport, raw_chunks
from .sse import SSEDecoder

__all__ = ["Call", "HttpUpstream", "UpstreamPool", "json_object", "loads", "nonempty_str", "read_body"]

# No cap on connections: admission is the upstream's job (it answers 429), and a local pool limit
# would turn our own queueing into timeouts that put a healthy upstream in cooldown.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=30.0)
_ERROR_BODY_LIMIT = 64 * 1024
_REDACTED = "[redacted]"


class UpstreamPool:
    """The one ``httpx.AsyncClient`` of all upstream deployments; closed when its last user lets go."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport  # tests plug in byte-level faults here
        self._client: httpx.AsyncClient | None = None
        self._users = 0
        self.transport: httpx.AsyncBaseTransport | None = None

    def acquire(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = self._transport or _transport()
            self._client = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False, transport=transport)
            # None: httpx picks a transport per URL (proxies), so calls go through the client.
            self.transport = transport
        self._users += 1
        return self._client

    async def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._client is not None:
            client, self._client, self.transport = self._client, None, None
            await client.aclose()


def _transport() -> httpx.AsyncBaseTransport | None:
    """The lean HTTP/1.1 transport in front of httpx's own, unless the environment names a proxy.

    None lets httpx build its default transport, which honours ``HTTP_PROXY`` and friends.
    """
    if urllib.request.getproxies():
        return None
    return Http1Transport(fallback=httpx.AsyncHTTPTransport(limits=_LIMITS))


class HttpUpstream(Provider):
    """One upstream endpoint on the shared pool: its calls, their errors, their bodies and events."""

    def __init__(self, deployment: UpstreamDeployment, *, pool: UpstreamPool) -> None:
        url = httpx.URL(deployment.base_url)
        # netloc carries no user info, so credentials in the URL stay out of logs.
        self.name = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
        self._secret = deployment.api_key.get_secret_value() if deployment.api_key else ""
        self._headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": f"interference/{__version__}",
            **self._wire_headers(deployment),
        }
        timeout = httpx.Timeout(deployment.timeout, connect=deployment.connect_timeout)
        self._timeouts = timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}
        self._head = _header_lines(self._headers)
        self._pool = pool
        self._client: httpx.AsyncClient | None = None

    def _wire_headers(self, deployment: UpstreamDeployment) -> dict[str, str]:
        """The API's own headers, the key's included (OpenAI's bearer token here)."""
        return {"Authorization": f"Bearer {self._secret}"} if self._secret else {}

    async def start(self) -> None:
        if self._client is None:
            self._client = self._pool.acquire()

    async def aclose(self) -> None:
        if self._client is not None:
            self._client = None
            await self._pool.release()

    # ------------------------------------------------------------------ the call

    def _post(self, url: httpx.URL, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> Call:
        """A ready call; ``_open`` sends it."""
        if self._client is None:
            raise RuntimeError(f"upstream {self.name} used before start()")
        return Call(url, orjson.dumps(body), headers)

    @contextlib.asynccontextmanager
    async def _open(self, call: Call) -> AsyncIterator[httpx.Response]:
        """The call's 2xx response, its body not read yet; any failure as an ``Upstream*`` error.

        The response is closed on the way out, whatever happens: a cancelled request closes its
        upstream connection too, so the upstream stops its work.
        """
        assert self._client is not None
        with self._translate_errors():
            response = await self._send(call)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                yield response
            finally:
                await response.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        """Plain ``http://`` calls go to the lean transport as bytes; others as an ``httpx.Request``,
        to the pool's transport directly, past the client's per-call work (auth and redirect
        generators, timers, and a cookie jar filled from every upstream's Set-Cookie), none of which
        applies to an upstream call; through the client only when httpx picks a transport per URL
        (proxies)."""
        transport = self._pool.transport
        if isinstance(transport, Http1Transport) and call.url.scheme == "http":
            head = self._head if call.headers is None else _header_lines(call.headers)
            return await transport.post(call.url, head, call.body, self._timeouts)
        request = httpx.Request(
            "POST",
            call.url,
            content=call.body,
            headers=call.headers or self._headers,
            extensions=self._extensions,
        )
        if transport is None:
            assert self._client is not None
            return await self._client.send(request, stream=True)
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    async def _read(self, call: Call) -> bytes:
        """The whole 2xx body of one call."""
        async with self._open(call) as response:
            return await read_body(response)

    async def _read_object(self, call: Call) -> dict[str, Any]:
        """The whole 2xx body of one call, which must be a JSON object."""
        return json_object(await self._read(call))

    @staticmethod
    async def _iter_data(response: httpx.Response) -> AsyncIterator[list[str]]:
        """The ``data`` payloads of an event-stream body, those of each chunk read together (one
        await per chunk, not per event)."""
        decoder = SSEDecoder()
        async for chunk in raw_chunks(response) or response.aiter_bytes():
            if batch := decoder.decode(chunk):
                yield batch
        if rest := decoder.flush():
            yield rest

    async def _iter_typed_events(
        self,
        response: httpx.Response,
        *,
        terminal: frozenset[str],
        error: Callable[[dict[str, Any], Callable[[str], str]], UpstreamError],
    ) -> AsyncIterator[MessageEvent]:
        """Events named by their ``type`` (Anthropic's, Responses'), relayed one by one.

        An ``error`` event raises ``error(event, redact)``; a stream that ends before one of the
        ``terminal`` events is an ``UpstreamProtocolError``.
        """
        finished = False
        async for batch in self._iter_data(response):
            for data in batch:
                event = loads(data)
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise UpstreamProtocolError("The upstream server sent a malformed event.")
                if event["type"] == "error":
                    raise error(event, self._redact)
                finished = finished or event["type"] in terminal
                yield MessageEvent(event["type"], event)
        if not finished:
            raise UpstreamProtocolError("The upstream server ended the stream before it finished.")

    # ------------------------------------------------------------------ failures

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
            nonempty_str(error.get("message"))
            or text.strip()[:500]
            or f"The upstream server answered {status}."
        )
        if status in (401, 403):
            return UpstreamAuthError(status, message)
        exc = UpstreamStatusError(
            status,
            message,
            body=body if isinstance(body, dict) else None,
            retry_after=_retry_after(response.headers),
        )
        if not exc.retryable:
            # The request's own fault: the client sees the upstream's error as the upstream wrote it.
            exc.type = nonempty_str(error.get("type")) or exc.type
            exc.param = nonempty_str(error.get("param"))
            exc.code = nonempty_str(error.get("code"))
        return exc


class Call:
    """One upstream POST, ready to send: its URL, JSON body and headers (None: the deployment's)."""

    __slots__ = ("body", "headers", "url")

    def __init__(self, url: httpx.URL, body: bytes, headers: dict[str, str] | None) -> None:
        self.url, self.body, self.headers = url, body, headers


def _header_lines(headers: dict[str, str]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())


async def read_body(response: httpx.Response) -> bytes:
    """A response's whole body (decoded, if it came encoded)."""
    chunks = raw_chunks(response)
    if chunks is None:
        return await response.aread()
    return b"".join([chunk async for chunk in chunks])


def loads(data: str | bytes) -> Any:
    """JSON from an upstream; anything malformed is an ``UpstreamProtocolError``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("The upstream server sent a malformed response.") from None


def json_object(data: str | bytes) -> dict[str, Any]:
    """A JSON object from an upstream; anything else is an ``UpstreamProtocolError``."""
    body = loads(data)
    if not isinstance(body, dict):
        raise UpstreamProtocolError("The upstream server sent a malformed response.")
    return body


def nonempty_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


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
