"""A fake Anthropic Messages upstream: a real uvicorn server on a free port, in a thread.

Its ``mode`` picks how it behaves and can be changed while it runs; it records what it received
(bodies, the ``x-api-key``, ``anthropic-version`` and ``anthropic-beta`` headers, the query strings).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODES = (
    "ok",  # answers with text
    "tools",  # answers with one tool_use block
    "thinking",  # a thinking block (THOUGHTS, signed) before the text, as with extended thinking
    "400",
    "403",
    "413",
    "429",
    "500",
    "529",  # Anthropic's "overloaded"
    "overloaded_event",  # 200, then an error event of type overloaded_error before anything else
    "torn",  # a stream that stops before message_stop
)
PIECES = ("Hel", "lo", " from", " Claude", "!")
INPUT_TOKENS, CACHE_READ = 11, 4
TOOL_INPUT = {"city": "Paris"}
THOUGHTS = ("Hmm, ", "a greeting.")
SIGNATURE = "sig-fake-0123"
_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class FakeAnthropic:
    mode: str = "ok"
    hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    betas: list[str | None] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnthropic:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake anthropic upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # ------------------------------------------------------------------ behaviour

    async def _record(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(await request.body())
        self.hits += 1
        self.bodies.append(body)
        self.keys.append(request.headers.get("x-api-key"))
        self.versions.append(request.headers.get("anthropic-version"))
        self.betas.append(request.headers.get("anthropic-beta"))
        self.queries.append(request.url.query)
        return body

    async def _count(self, request: Request) -> Response:
        await self._record(request)
        if self.mode.isdigit():
            return _error(int(self.mode))
        return JSONResponse({"input_tokens": INPUT_TOKENS + CACHE_READ})

    async def _messages(self, request: Request) -> Response:
        body = await self._record(request)
        if self.mode.isdigit():
            return _error(int(self.mode))
        if body.get("stream"):
            return StreamingResponse(self._events(body), media_type="text/event-stream")
        return JSONResponse(self._message(body, self._content(), final=True))

    def _content(self) -> list[dict[str, Any]]:
        if self.mode == "tools":
            return [{"type": "tool_use", "id": "toolu_fake1", "name": "get_weather", "input": TOOL_INPUT}]
        text = {"type": "text", "text": "".join(PIECES)}
        if self.mode == "thinking":
            return [{"type": "thinking", "thinking": "".join(THOUGHTS), "signature": SIGNATURE}, text]
        return [text]

    def _message(self, body: dict[str, Any], content: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        reason = ("tool_use" if self.mode == "tools" else "end_turn") if final else None
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": INPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": CACHE_READ,
                "output_tokens": len(PIECES) if final else 1,
            },
        }

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        def event(kind: str, **payload: Any) -> bytes:
            return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **payload}) + b"\n\n"

        if self.mode == "overloaded_event":
            yield event("error", error={"type": "overloaded_error", "message": "Overloaded"})
            return
        yield event("message_start", message=self._message(body, [], final=False))
        yield event("ping")
        at = 0  # the index of the last content block
        if self.mode == "tools":
            block = {"type": "tool_use", "id": "toolu_fake1", "name": "get_weather", "input": {}}
            yield event("content_block_start", index=0, content_block=block)
            for part in ('{"city": ', '"Paris"}'):
                yield event(
                    "content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": part}
                )
        else:
            if self.mode == "thinking":
                block = {"type": "thinking", "thinking": "", "signature": ""}
                yield event("content_block_start", index=0, content_block=block)
                for thought in THOUGHTS:
                    delta = {"type": "thinking_delta", "thinking": thought}
                    yield event("content_block_delta", index=0, delta=delta)
                signed = {"type": "signature_delta", "signature": SIGNATURE}
                yield event("content_block_delta", index=0, delta=signed)
                yield event("content_block_stop", index=0)
                at = 1
            yield event("content_block_start", index=at, content_block={"type": "text", "text": ""})
            pieces = PIECES[:2] if self.mode == "torn" else PIECES
            for piece in pieces:
                yield event("content_block_delta", index=at, delta={"type": "text_delta", "text": piece})
            if self.mode == "torn":
                return
        yield event("content_block_stop", index=at)
        reason = "tool_use" if self.mode == "tools" else "end_turn"
        yield event(
            "message_delta",
            delta={"stop_reason": reason, "stop_sequence": None},
            usage={"output_tokens": len(PIECES)},
        )
        yield event("message_stop")


def _error(status: int) -> Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": f"fake anthropic says {status}"}}
    return JSONResponse(body, status_code=status)
