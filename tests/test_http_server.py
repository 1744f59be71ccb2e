"""HTTP/1.1 on raw sockets: a body larger than what the server reads ahead, keep-alive, pipelining,
HEAD and ``Expect: 100-continue``, each answered whole and in order on one connection; and what a
route parsed outlives its response, not the other way round."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import weakref

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from conftest import RunningServer
from interference.api.dispatch import hold_until_sent, install_exact_routes


def _request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    if body or method == "POST":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Reader:
    """Whole HTTP/1.1 responses off one socket, by their content-length (or none, for HEAD)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        assert data, "the server closed the connection"
        self.buffer += data

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body


def _connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_a_body_larger_than_the_read_ahead_is_read_whole(server: RunningServer) -> None:
    # Valid JSON that fails validation: the whole body is read before the answer, a 400 in OpenAI's
    # envelope.
    filler = "x" * (3 << 19)  # 1.5 MiB, where the server stops reading at 64 KiB until the app takes it
    body = json.dumps({"model": "gpt-3.5-turbo", "messages": filler}).encode()
    with _connect(server) as sock:
        reader = _Reader(sock)
        sock.sendall(_request("POST", "/v1/chat/completions", body))
        status, headers, answer = reader.response()
        assert status == 400
        assert json.loads(answer)["error"]["type"] == "invalid_request_error"
        assert headers["content-type"] == "application/json"
        # The connection carries the next request.
        sock.sendall(_request("GET", "/v1/models"))
        status, _, answer = reader.response()
        assert status == 200 and json.loads(answer)["object"] == "list"


def test_pipelined_requests_head_and_continue_on_one_connection(server: RunningServer) -> None:
    chat = json.dumps(
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}
    ).encode()
    with _connect(server) as sock:
        reader = _Reader(sock)
        # Two requests in one write: answered in order, each whole.
        sock.sendall(_request("GET", "/health") + _request("GET", "/v1/models"))
        first, second = reader.response(), reader.response()
        assert first[0] == 200 and second[0] == 200
        assert int(first[1]["content-length"]) == len(first[2])
        assert json.loads(second[2])["object"] == "list"

        # HEAD: the head alone, and then the next response starts right after it.
        sock.sendall(_request("HEAD", "/health"))
        status, headers, _ = reader.response(head_only=True)
        assert status in (200, 405) and int(headers["content-length"]) > 0  # no body follows it
        sock.sendall(_request("GET", "/health"))
        status, _, answer = reader.response()
        assert status == 200 and answer

        # Expect: 100-continue: the interim response first, then the answer once the body is sent.
        head = _request("POST", "/v1/chat/completions", chat, expect="100-continue")
        sock.sendall(head[: -len(chat)])
        status, _, _ = reader.response(head_only=True)
        assert status == 100
        sock.sendall(chat)
        status, headers, answer = reader.response()
        assert status == 200
        assert json.loads(answer)["choices"][0]["finish_reason"] in ("length", "stop")
        assert int(headers["content-length"]) == len(answer)


def test_a_stream_is_chunked_and_ends(server: RunningServer) -> None:
    chat = json.dumps(
        {
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "Hi."}],
            "max_tokens": 3,
            "stream": True,
        }
    ).encode()
    with _connect(server) as sock:
        sock.sendall(_request("POST", "/v1/chat/completions", chat))
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(1 << 16)
            assert chunk
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert b"data: [DONE]" in rest


def test_what_a_route_parsed_is_freed_after_its_response_is_sent() -> None:
    # The exact-route dispatch keeps a held value alive while the response goes out, and lets go of
    # it on the loop's next turn.
    class Parsed:
        pass

    refs: list[weakref.ref[Parsed]] = []
    router = APIRouter()

    @router.post("/parse")
    async def parse(request: Request) -> Response:
        parsed = Parsed()
        refs.append(weakref.ref(parsed))
        hold_until_sent(request.scope, parsed)
        return Response(b"ok")

    app = FastAPI()
    app.include_router(router)
    install_exact_routes(app, [("", router)])

    async def go() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, object]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            seen.append((str(message["type"]), refs[0]() is not None))

        scope = {"type": "http", "method": "POST", "path": "/parse", "headers": [], "query_string": b""}
        await app(scope, receive, send)
        seen.append(("returned", refs[0]() is not None))
        await asyncio.sleep(0)
        gc.collect()
        seen.append(("next turn", refs[0]() is not None))
        return seen

    assert asyncio.run(go()) == [
        ("http.response.start", True),
        ("http.response.body", True),
        ("returned", True),
        ("next turn", False),
    ]


def test_start_up_objects_are_frozen_out_of_full_collections() -> None:
    """Once the server has started, what start-up made sits in the collector's permanent generation,
    so a full collection walks only what requests made since, and the server still answers."""
    import uvicorn

    from interference.api.shutdown import Shutdown
    from interference.server import GracefulServer

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def run() -> tuple[int, int]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning")
        server = GracefulServer(config, shutdown=Shutdown(), timeout=1.0)
        assert gc.get_freeze_count() == 0
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not serving.done()
                await asyncio.sleep(0.01)
            frozen = gc.get_freeze_count()
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            writer.write(_request("GET", "/"))
            status = int((await reader.readuntil(b"\r\n\r\n"))[9:12])
            writer.close()
        finally:
            server.should_exit = True
            await serving
        return frozen, status

    gc.unfreeze()
    try:
        frozen, status = asyncio.run(run())
    finally:
        gc.unfreeze()  # the rest of the test process collects as before
    assert frozen > 10_000  # the imported modules, classes and functions at least
    assert status == 204
