"""Http1Transport against a raw asyncio server on a free port: keep-alive, framing, faults, fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from interference.providers.http1 import Http1Transport

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


def test_a_stale_pooled_connection_is_retried_on_a_new_one() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        await writer.drain()
        return False  # closes after each answer although it promised keep-alive

    async def scenario() -> None:
        async with Server(reply) as server, client() as c:
            for _ in range(3):
                assert (await c.post(server.url, content=b"x")).text == "hello"
                await asyncio.sleep(0.05)  # let the close arrive (or not): both must work
            assert server.connections == 3 and len(server.requests) == 3

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
