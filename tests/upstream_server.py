"""One upstream server for the tests: real uvicorn on a free port, in a thread, speaking OpenAI and Anthropic.

It serves OpenAI's ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings``
and vLLM's ``/tokenize``, and Anthropic's ``/v1/messages`` and ``/v1/messages/count_tokens``, all at
once. What it says is a ``Reply`` (``upstream_wire.py`` writes it in either format): ``pieces`` every
time, or what ``script`` makes of each request. ``mode`` injects faults and can be changed while it
runs; everything that arrives is recorded. ``fake_upstream.FakeUpstream``,
``fake_anthropic.FakeAnthropic`` and ``scripted_upstream.ScriptedUpstream`` are this server with their
own defaults.

Modes (a route answers those that mean something to it, and the others normally):
    ok                    answers normally
    slow                  waits SLOW_SECONDS first (chat, completions)
    "400", "529", ...     that status in the route's error shape (with ``retry_after`` on OpenAI's)
    echo_key_401/_500     an OpenAI error that quotes the Authorization header it got
    garbage               200, then bytes that are not OpenAI JSON
    garbage_mid           two good chunks, then garbage
    torn                  two pieces, then the stream stops: OpenAI's connection drops, Anthropic's
                          stream ends without message_stop
    stall_mid             two good chunks, then silence for SLOW_SECONDS (a drip slower than a timeout)
    not_sse               200 text/event-stream whose body is JSON lines, not SSE events
    tools                 a tool call (TOOL_NAME with TOOL_PIECES) instead of text
    reasoning, thinking   reasoning (``thoughts``) before the text, as thinking models send it
    overloaded_event      Anthropic: 200, then an error event of type overloaded_error
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import upstream_wire as wire
from upstream_wire import Reply

SLOW_SECONDS = 5.0
_CUT_MODES = ("torn", "garbage_mid")  # streams that stop after two pieces


@dataclass
class UpstreamServer:
    mode: str = "ok"
    pieces: tuple[str, ...] = ("Hello",)
    thoughts: tuple[str, ...] = ("Let me ", "think.")
    script: Callable[[str, dict[str, Any]], Reply] | None = None  # (path, body) -> what to say
    base_path: str = "/v1"  # the path of the deployment's base_url: Anthropic's has none
    token_delay: float = 0.0
    retry_after: str | None = None  # a Retry-After header on OpenAI error answers
    stream_usage: bool = False  # a usage chunk closes every chat stream, asked for or not
    has_tokenize: bool = False  # answer vLLM's /tokenize (at the root) with the prompt's usage count
    embedding_status: int = 200  # anything else: /v1/embeddings answers that error
    # What arrived; keys: the Authorization header (OpenAI's routes) or x-api-key (Anthropic's).
    hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    betas: list[str | None] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    streams_closed_early: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the upstream server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop listening; the port stays known so ``start`` can bring it back."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # ------------------------------------------------------------------ what to say

    async def _record(self, request: Request, *, key_header: str = "authorization") -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(await request.body())
        self.hits += 1
        self.bodies.append(body)
        self.paths.append(request.url.path)
        self.keys.append(request.headers.get(key_header))
        self.versions.append(request.headers.get("anthropic-version"))
        self.betas.append(request.headers.get("anthropic-beta"))
        self.queries.append(request.url.query)
        return body

    def _reply(self, path: str, body: dict[str, Any]) -> Reply:
        if self.script is not None:
            return self.script(path, body)
        if self.mode == "tools":  # the pieces still count as the usage, as a real server would
            return Reply(pieces=self.pieces, tool=wire.TOOL_NAME, tool_pieces=wire.TOOL_PIECES)
        thoughts = self.thoughts if self.mode in ("reasoning", "thinking") else ()
        return Reply(pieces=self.pieces, thoughts=thoughts)

    # ------------------------------------------------------------------ OpenAI

    def _openai_fault(self, key: str | None) -> Response | None:
        """The error answer ``mode`` asks for, if any."""
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
        mode = self.mode
        if mode.isdigit():
            return _openai_status(int(mode), headers)
        if mode == "echo_key_401":
            return wire.openai_error(401, f"Incorrect API key provided: {key}", code="invalid_api_key")
        if mode == "echo_key_500":
            return wire.openai_error(500, f"internal error while checking {key}")
        return None

    async def _completions(self, request: Request) -> Response:
        body = await self._record(request)
        if self.mode == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if (fault := self._openai_fault(self.keys[-1])) is not None:
            return fault
        is_chat = request.url.path.endswith("/chat/completions")
        reply = self._reply(request.url.path, body)
        if self.mode == "garbage":
            if body.get("stream"):
                garbage = [b"data: <html>this is not an event stream</html>\n\n"]
                return StreamingResponse(_iter(garbage), media_type="text/event-stream")
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        if not body.get("stream"):
            whole = wire.chat_body(reply, body) if is_chat else wire.completion_body(reply, body)
            return JSONResponse(whole)
        if self.mode in _CUT_MODES:
            reply = dataclasses.replace(reply, pieces=reply.pieces[:2])
        with_usage = self.stream_usage or bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = wire.chat_chunks(reply, body, is_chat=is_chat, with_usage=with_usage)
        if self.mode == "not_sse":
            return Response(b"".join(orjson.dumps(c) + b"\n" for c in chunks), media_type="text/event-stream")
        return StreamingResponse(self._events(chunks, self.mode), media_type="text/event-stream")

    async def _events(self, chunks: list[dict[str, Any]], mode: str) -> AsyncIterator[bytes]:
        finished = False
        try:
            for i, chunk in enumerate(chunks):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if mode == "stall_mid" and i == 3:  # the role chunk and two pieces went out
                    await asyncio.sleep(SLOW_SECONDS)
                yield wire.sse(chunk)
            if mode == "garbage_mid":
                yield b"data: {this is not json\n\n"
            if mode == "torn":
                raise ConnectionAbortedError("the fake upstream drops the connection")
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished and mode not in _CUT_MODES:
                self.streams_closed_early += 1

    async def _responses(self, request: Request) -> Response:
        """/v1/responses served natively: the raw body is recorded; errors as chat gives them."""
        body = await self._record(request)
        if self.mode.isdigit():
            return _openai_status(int(self.mode))
        whole, events = wire.response_events(self._reply(request.url.path, body), body, self.hits)
        if not body.get("stream"):
            return JSONResponse(whole)
        return Response(b"".join(wire.sse(e, e["type"]) for e in events), media_type="text/event-stream")

    async def _embeddings(self, request: Request) -> Response:
        """Vector i of a request is [i+1, 1, 1, ...], answered out of order (the gateway must sort)."""
        body = await self._record(request)
        if self.embedding_status != 200:
            status = self.embedding_status
            return wire.openai_error(status, f"upstream says {status}", param="input", code=None)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size, encoding = body.get("dimensions", 8), body.get("encoding_format")
        data = []
        for i in reversed(range(len(inputs))):
            vector = [float(i + 1)] + [1.0] * (size - 1)
            encoded: Any = vector
            if encoding == "base64":
                encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        usage = {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}
        return JSONResponse({"object": "list", "data": data, "model": body["model"], "usage": usage})

    async def _tokenize(self, request: Request) -> Response:
        if not self.has_tokenize:
            return Response(b'{"detail": "Not Found"}', status_code=404, media_type="application/json")
        self.bodies.append(orjson.loads(await request.body()))
        return JSONResponse({"count": wire.PROMPT_TOKENS, "max_model_len": 4096, "tokens": []})

    # ------------------------------------------------------------------ Anthropic

    async def _count_tokens(self, request: Request) -> Response:
        await self._record(request, key_header="x-api-key")
        if self.mode.isdigit():
            return wire.anthropic_error(int(self.mode))
        return JSONResponse({"input_tokens": wire.PROMPT_TOKENS + wire.CACHED_TOKENS})

    async def _messages(self, request: Request) -> Response:
        body = await self._record(request, key_header="x-api-key")
        if self.mode.isdigit():
            return wire.anthropic_error(int(self.mode))
        reply = self._reply(request.url.path, body)
        if not body.get("stream"):
            return JSONResponse(wire.message(reply, body, final=True))
        if self.mode == "overloaded_event":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            events = [wire.sse(error, "error")]
        else:
            events = wire.message_events(reply, body, is_torn=self.mode == "torn")
        return StreamingResponse(_iter(events), media_type="text/event-stream")


def _openai_status(status: int, headers: dict[str, str] | None = None) -> Response:
    message = f"fake upstream says {status}"
    return wire.openai_error(status, message, param="messages" if status == 400 else None, headers=headers)


async def _iter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
