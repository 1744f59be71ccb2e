"""A lean plain-HTTP/1.1 transport for httpx: asyncio protocols, llhttp (httptools), a keep-alive pool.

httpcore's pool re-examines every pooled connection for every request (polling each socket), so a
gateway hop through it costs about a millisecond at one request in flight and several at 64. This
transport keeps idle connections on a per-origin stack and parses responses with httptools, the
parser uvicorn already uses. It serves plain ``http://`` requests with a fixed-size body (the
gateway's upstream calls); anything else (TLS, ``HEAD``, chunked uploads) goes to the fallback.

Failures are raised as httpx's own exceptions, so callers see one hierarchy whichever transport ran:

    cannot connect                      -> httpx.ConnectError / httpx.ConnectTimeout
    no response in time                 -> httpx.ReadTimeout
    connection reset mid-response       -> httpx.ReadError
    closed or reset before any response -> httpx.RemoteProtocolError (the request is not re-sent)
    malformed response, cut-short body  -> httpx.RemoteProtocolError

A request is written at most once. It goes on a new connection only when it provably never
reached the server: a pooled connection that the server has closed (its EOF or reset already seen,
or waiting unread on the socket, checked just before writing) is dropped and never written to. Once
the bytes are written nothing is sent again, even when the server closes without answering: it may
have read the request and started work (and billed for it). That case is a
``httpx.RemoteProtocolError``; the router, not the transport, decides what happens next.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

__all__ = ["Http1Transport", "raw_chunks"]

_HIGH_WATER = 1 << 20  # buffered response bytes before we stop reading from the socket
_LOW_WATER = 1 << 18


class _Connection(asyncio.Protocol):
    """One TCP connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._chunks.clear()  # what an earlier reader left unread of a complete response
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._has_length = False
        self._is_interim = False
        self._headers_done = False
        self.complete = False
        self._keep_alive = False
        self._error: Exception | None = None
        self._received_any = False
        self._active = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            self.close()  # bytes nobody asked for: the connection can no longer be trusted
            return
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from the server: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._active or self.complete:
            return
        if self._headers_done and not self._has_length and exc is None:
            self.complete = True  # the body ran to the end of the connection
            self._wake()
        elif not self._received_any:
            # The request was written: the server may have read it, so it is never sent again.
            how = f"broke ({exc})" if exc is not None else "was closed"
            self._fail(httpx.RemoteProtocolError(f"the connection {how} before any response; not re-sent"))
        elif exc is not None:
            self._fail(httpx.ReadError(f"connection to the server broke: {exc}"))
        elif self._headers_done:
            self._fail(httpx.RemoteProtocolError("server closed the connection before the body ended"))
        else:
            self._fail(httpx.RemoteProtocolError("server disconnected without sending a whole response"))

    # ------------------------------------------------------------------ parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._has_length = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints): the real one follows
            self._is_interim = True
            self.headers, self._has_length = [], False
            return
        self.status = status
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._is_interim:
            self._is_interim = False
            return
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message ends
        self.complete = True
        self._active = False
        self._wake()

    # ------------------------------------------------------------------ the request's side

    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        self._active = True
        assert self._transport is not None
        self._transport.writelines((head, body))  # no joined copy of a large body

    @property
    def is_reusable(self) -> bool:
        return self.complete and self._keep_alive and not self.closed

    def is_dropped(self) -> bool:
        """Whether an idle connection is closed or has input the loop has not read yet (EOF, reset).

        An idle connection may hold nothing unread, so anything readable means it cannot carry a
        request: the server closed it (or sent bytes nobody asked for).
        """
        if self.closed or self._transport is None or self._transport.is_closing():
            return True
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return False
        return _is_readable(sock.fileno())

    async def wait_headers(self, timeout: float | None) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait(timeout)

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            await self._wait(timeout)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _wait(self, timeout: float | None) -> asyncio.Future[None]:
        self._waiter = waiter = self._loop.create_future()
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._time_out, waiter)
            waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("the server did not answer in time"))

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._wake()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, transport: Http1Transport, origin: tuple[str, int], conn: _Connection, timeout: float | None
    ):
        self._transport, self._origin, self._conn, self._timeout = transport, origin, conn, timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk(self._timeout)) is not None:
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.release(self._origin, self._conn)


def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes] | None:
    """The body's pieces straight from this transport's connection, past httpx's decoders and
    counters, when nothing needs decoding; None otherwise (another transport, a content encoding)."""
    stream = response.stream
    if isinstance(stream, _Body) and "content-encoding" not in response.headers:
        return stream.__aiter__()
    return None


class Http1Transport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 with keep-alive; other requests go to ``fallback``."""

    def __init__(
        self, *, fallback: httpx.AsyncBaseTransport, max_idle: int = 1024, keepalive_expiry: float = 30.0
    ) -> None:
        self._fallback = fallback
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http" or request.method == "HEAD" or "transfer-encoding" in request.headers:
            return await self._fallback.handle_async_request(request)
        head = b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), url.raw_path)
        head += b"".join(b"%s: %s\r\n" % pair for pair in request.headers.raw) + b"\r\n"
        return await self._exchange(url, head, await request.aread(), request.extensions.get("timeout", {}))

    async def post(
        self, url: httpx.URL, headers: bytes, body: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        """POST ``body`` to a plain ``http://`` URL; ``headers`` are ready ``name: value\\r\\n`` lines,
        without Host and Content-Length. The same exchange as ``handle_async_request``, without an
        ``httpx.Request`` (whose headers and URL handling cost more than the exchange's own work)."""
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            url.raw_path,
            url.netloc,
            len(body),
            headers,
        )
        return await self._exchange(url, head, body, timeouts)

    async def _exchange(
        self, url: httpx.URL, head: bytes, body: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        origin = (url.host, url.port or 80)
        conn = self._checkout(origin) or await self._connect(origin, timeouts.get("connect"))
        try:
            conn.send(head, body)  # no await between the checks in _checkout and this write
            await conn.wait_headers(timeouts.get("read"))
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, origin, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def release(self, origin: tuple[str, int], conn: _Connection) -> None:
        """Take a connection back after its response: pooled if whole and reusable, else closed."""
        stack = self._idle.setdefault(origin, [])
        if conn.is_reusable and len(stack) < self._max_idle:
            conn.idle_since = asyncio.get_running_loop().time()
            stack.append(conn)
        else:
            conn.close()

    def _checkout(self, origin: tuple[str, int]) -> _Connection | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = asyncio.get_running_loop().time()
        while stack:
            conn = stack.pop()  # most recently used first: the likeliest to be alive
            if now - conn.idle_since < self._expiry and not conn.is_dropped():
                return conn
            conn.close()
        return None

    async def _connect(self, origin: tuple[str, int], timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), origin[0], origin[1])
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {origin[0]}:{origin[1]}") from None
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {origin[0]}:{origin[1]}: {exc.strerror or exc}"
            ) from exc
        return conn

    async def aclose(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
        await self._fallback.aclose()


def _is_readable(fd: int) -> bool:
    """A zero-timeout readability check of one socket (poll, so descriptors above 1023 work too)."""
    if fd < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows has no poll
