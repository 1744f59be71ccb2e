"""Http1Transport against a raw asyncio server on a free port: keep-alive, framing, faults, fallback."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from interference.providers.http1 import Http1Transport, raw_chunks
from interference.providers.http_upstream import read_body

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # returns False to close the connection


def ok(body: bytes = b"hello", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


class Server:
    """Answers each request with ``reply``; counts connections and requests."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/x"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.reply(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(**kwargs: Any) -> httpx.AsyncClient:
    fallback = kwargs.pop("fallback", None) or httpx.AsyncHTTPTransport()
    return httpx.AsyncClient(transport=Http1Transport(fallback=fallback, **kwargs), timeout=5)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_the_request_intact() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"pong"))
        return True

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            for i in range(5):
                r = await c.post(
                    server.url + "?q=1", content=b'{"n": %d}' % i, headers={"authorization": "Bearer k"}
                )
                assert (r.status_code, r.text) == (200, "pong")
            assert server.connections == 1
            first = server.requests[0]
            assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
            assert b"\r\nauthorization: Bearer k\r\n" in first and first.endswith(b'\r\n\r\n{"n": 0}')

    run(scenario())


def test_chunked_body_arrives_piece_by_piece() -> None:
    released = asyncio.Event()

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await released.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        return True

    async def scenario() -> None:
        async with Server(reply) as server, client() as c, c.stream("POST", server.url, content=b"x") as r:
            pieces = r.aiter_bytes()
            assert await anext(pieces) == b"first"  # before the rest was even written
            released.set()
            assert [p async for p in pieces] == [b"second"]

    run(scenario())


def test_body_delimited_by_close_and_connection_close_are_not_reused() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if request.endswith(b"eof"):
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        else:
            writer.write(ok(b"bye", b"connection: close"))
        return False

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            texts = [(await c.post(server.url, content=body)).text for body in (b"eof", b"close", b"eof")]
            assert texts == ["until the end", "bye", "until the end"]
            assert server.connections == 3

    run(scenario())


def test_interim_responses_are_skipped() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n" + ok(b"final"))
        return True

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            for _ in range(2):
                r = await c.post(server.url, content=b"x")
                assert (r.status_code, r.text, "link" in r.headers) == (200, "final", False)
            assert server.connections == 1

    run(scenario())


def test_a_pooled_connection_the_server_closed_is_never_written_to() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        await writer.drain()
        return False  # closes after each answer although it promised keep-alive

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            for _ in range(3):
                assert (await c.post(server.url, content=b"x")).text == "hello"
                await asyncio.sleep(0.05)  # the close arrives and the loop sees it
            assert server.connections == 3 and len(server.requests) == 3

    run(scenario())


class ThreadedServer:
    """A blocking server in a thread: answers the first request on each connection, then closes it.

    It runs outside the event loop, so its close can reach the client's socket while the loop is
    blocked and has not read it yet.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\r\n\r\nx"):
                    data += conn.recv(65536)
                self.requests.append(data)
                conn.sendall(ok())
            self.closed.set()

    def stop(self) -> None:
        self.listener.close()
        self._thread.join(timeout=5)


def test_a_close_the_loop_has_not_read_yet_is_seen_before_writing() -> None:
    server = ThreadedServer()

    async def scenario() -> None:
        async with client() as c:
            url = f"http://127.0.0.1:{server.port}/v1/x"
            for _ in range(3):
                server.closed.clear()
                assert (await c.post(url, content=b"x")).text == "hello"
                assert server.closed.wait(5)
                time.sleep(0.1)  # blocks the loop: the FIN waits unread on the pooled socket
        assert len(server.requests) == 3  # each written once, each on a new connection

    try:
        run(scenario())
    finally:
        server.stop()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("is_reused", [False, True])
def test_a_written_request_is_never_sent_again(how: str, is_reused: bool) -> None:
    """The server reads the request and goes away without answering: an error, never a second copy."""

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if request.endswith(b"first"):
            writer.write(ok())
            return True
        if how == "reset":
            _abort(writer)
        return False

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            if is_reused:
                assert (await c.post(server.url, content=b"first")).text == "hello"
            with pytest.raises(httpx.RemoteProtocolError, match="before any response; not re-sent"):
                await c.post(server.url, content=b"second")
            await asyncio.sleep(0.1)  # a second copy, if one were sent, would have arrived by now
            assert [r.rsplit(b"\r\n", 1)[-1] for r in server.requests] == [b"first"] * is_reused + [b"second"]
            assert server.connections == 1

    run(scenario())


def test_reading_part_of_a_body_closes_the_connection() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"1\r\nb\r\n0\r\n\r\n")
        return True

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            async with c.stream("POST", server.url, content=b"x") as r:
                async for _ in r.aiter_bytes():
                    break
            await c.post(server.url, content=b"x")
            assert server.connections == 2

    run(scenario())


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
        (b"", httpx.RemoteProtocolError),
    ],
)
def test_broken_responses_raise_httpx_errors(response: bytes, error: type[Exception]) -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(response)
        return False

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            with pytest.raises(error):
                await c.post(server.url, content=b"x")

    run(scenario())


def test_timeouts_and_refused_connections() -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def scenario() -> None:
        async with Server(silent) as server, client() as c:
            port = server.port
            with pytest.raises(httpx.ReadTimeout):
                await c.post(server.url, content=b"x", timeout=httpx.Timeout(5, read=0.2))
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.post(f"http://127.0.0.1:{port}/", content=b"x")

    run(scenario())


def test_a_large_body_is_complete_under_back_pressure() -> None:
    body = bytes(range(256)) * 20000  # 5 MB, above the read-pause threshold

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(body))
        return True

    async def scenario() -> None:
        async with Server(reply) as server, client() as c, c.stream("GET", server.url) as r:
            received = bytearray()
            async for piece in r.aiter_raw():
                received += piece
                await asyncio.sleep(0)  # a slow reader
            assert bytes(received) == body

    run(scenario())


def test_other_requests_go_to_the_fallback() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.scheme}")
        return httpx.Response(204)

    async def scenario() -> None:
        async with client(fallback=httpx.MockTransport(handler)) as c:
            await c.post("https://api.example.test/v1/x", content=b"x")
            await c.head("http://api.example.test/")

    run(scenario())
    assert seen == ["POST https", "HEAD http"]


def test_post_writes_ready_headers_and_plain_bodies_are_read_raw() -> None:
    """The gateway's own calls: ready header lines, Host and Content-Length added, the body as given;
    a plain answer is read straight off the connection."""

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b'{"ok": true}'))
        return True

    async def scenario() -> None:
        transport = Http1Transport(fallback=httpx.AsyncHTTPTransport())
        async with Server(reply) as server:
            for _ in range(2):
                response = await transport.post(httpx.URL(server.url), b"a: b\r\n", b'{"x": 1}', {"read": 5})
                assert isinstance(response.stream, httpx.AsyncByteStream)
                assert "content-encoding" not in response.headers
                assert await read_body(response) == b'{"ok": true}'
                await response.aclose()
            assert server.connections == 1  # read whole and closed: the connection went back to the pool
            assert server.requests[0] == (
                b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 8\r\na: b\r\n\r\n"
                % server.port
                + b'{"x": 1}'
            )
        await transport.aclose()

    run(scenario())


def test_an_encoded_body_is_decoded() -> None:
    body = gzip.compress(b'{"ok": true}')

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(body, b"content-encoding: gzip"))
        return True

    async def scenario() -> None:
        transport = Http1Transport(fallback=httpx.AsyncHTTPTransport())
        async with Server(reply) as server:
            response = await transport.post(httpx.URL(server.url), b"", b"{}", {"read": 5})
            assert raw_chunks(response) is None
            assert await read_body(response) == b'{"ok": true}'
            await response.aclose()
        await transport.aclose()

    run(scenario())
