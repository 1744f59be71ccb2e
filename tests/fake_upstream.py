"""A fake OpenAI-compatible upstream: a real uvicorn server on a free port, in a thread.

Its ``mode`` picks how it behaves and can be changed while it runs; it records what it received.
"""

from __future__ import annotations

import asyncio
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
    "ok",  # answers normally
    "slow",  # waits SLOW_SECONDS before answering
    "500",
    "429",
    "400",  # the request's fault, in OpenAI's error shape
    "echo_key_401",  # a 401 that quotes the Authorization header it got
    "echo_key_500",  # a 500 that quotes it
    "garbage",  # 200, then bytes that are not OpenAI JSON
    "garbage_mid",  # two good chunks, then garbage
    "torn",  # two good chunks, then the connection drops
    "tools",  # a tool call instead of text
)
SLOW_SECONDS = 5.0
PIECES = ("Hel", "lo", ", w\u00f6rld", " \u2713", " \U0001f600", "!")


@dataclass
class FakeUpstream:
    mode: str = "ok"
    pieces: tuple[str, ...] = PIECES
    token_delay: float = 0.0
    hits: int = 0
    keys: list[str | None] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    streams_closed_early: int = 0
    has_tokenize: bool = False  # answer vLLM's /tokenize (at the root) with the prompt's usage count
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeUpstream:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._handle, methods=["POST"]),
                Route("/v1/completions", self._handle, methods=["POST"]),
                Route("/tokenize", self._tokenize, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop listening; the port stays known so ``start`` can bring it back."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # ------------------------------------------------------------------ behaviour

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.hits += 1
        key = request.headers.get("authorization")
        self.keys.append(key)
        self.bodies.append(body)
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if mode in ("500", "429", "400"):
            return _error(int(mode), f"fake upstream says {mode}")
        if mode == "echo_key_401":
            return _error(401, f"Incorrect API key provided: {key}", code="invalid_api_key")
        if mode == "echo_key_500":
            return _error(500, f"internal error while checking {key}")
        is_chat = request.url.path.endswith("/chat/completions")
        if mode == "garbage":
            if body.get("stream"):
                return StreamingResponse(_garbage(), media_type="text/event-stream")
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        if body.get("stream"):
            return StreamingResponse(
                self._events(body, is_chat=is_chat, mode=mode), media_type="text/event-stream"
            )
        return JSONResponse(self._whole(body, is_chat=is_chat, mode=mode))

    async def _tokenize(self, request: Request) -> Response:
        if not self.has_tokenize:
            return Response(b'{"detail": "Not Found"}', status_code=404, media_type="application/json")
        self.bodies.append(orjson.loads(await request.body()))
        return JSONResponse({"count": _usage(0)["prompt_tokens"], "max_model_len": 4096, "tokens": []})

    def _whole(self, body: dict[str, Any], *, is_chat: bool, mode: str) -> dict[str, Any]:
        text = "".join(self.pieces)
        usage = _usage(len(self.pieces))
        if not is_chat:
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "tokens": list(self.pieces),
                    "token_logprobs": [-0.5] * len(self.pieces),
                }
            return {
                "id": "cmpl-up",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        if mode == "tools":
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [_TOOL_CALL]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": text}, "stop"
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [_logprob(p) for p in self.pieces]}
        return {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }

    async def _events(self, body: dict[str, Any], *, is_chat: bool, mode: str) -> AsyncIterator[bytes]:
        finished = False
        try:
            for chunk in self._chunks(body, is_chat=is_chat, mode=mode):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            if mode == "garbage_mid":
                yield b"data: {this is not json\n\n"
            if mode == "torn":
                raise ConnectionAbortedError("the fake upstream drops the connection")
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished and mode not in ("torn", "garbage_mid"):
                self.streams_closed_early += 1

    def _chunks(self, body: dict[str, Any], *, is_chat: bool, mode: str) -> list[dict[str, Any]]:
        base = {"id": "up-1", "created": 1, "model": body["model"], "system_fingerprint": "fp_up"}
        pieces = self.pieces[:2] if mode in ("torn", "garbage_mid") else self.pieces
        wants_logprobs = bool(body.get("logprobs"))
        chunks: list[dict[str, Any]] = []
        if not is_chat:
            for piece in pieces:
                lp = {"tokens": [piece], "token_logprobs": [-0.5]} if wants_logprobs else None
                chunks.append(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [{"index": 0, "text": piece, "logprobs": lp, "finish_reason": None}],
                    }
                )
            chunks.append(
                {
                    **base,
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
                }
            )
        else:

            def chat(delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
                choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
                return {**base, "object": "chat.completion.chunk", "choices": [choice]}

            chunks.append(chat({"role": "assistant", "content": ""}))
            if mode == "tools":
                call = _TOOL_CALL
                chunks.append(
                    chat(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""},
                                }
                            ]
                        }
                    )
                )
                for part in ('{"city": ', '"Paris"}'):
                    chunks.append(chat({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
                chunks.append(chat({}, "tool_calls"))
            else:
                for piece in pieces:
                    lp = {"content": [_logprob(piece)]} if wants_logprobs else None
                    chunks.append(chat({"content": piece}, lp=lp))
                chunks.append(chat({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(
                {
                    **base,
                    "object": "chat.completion.chunk" if is_chat else "text_completion",
                    "choices": [],
                    "usage": _usage(len(pieces)),
                }
            )
        return chunks


_TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def _usage(completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": 11,
        "completion_tokens": completion,
        "total_tokens": 11 + completion,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


def _error(status: int, message: str, *, code: str | None = "fake_code") -> Response:
    error = {
        "message": message,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": "messages" if status == 400 else None,
        "code": code,
    }
    return JSONResponse({"error": error}, status_code=status)


async def _garbage() -> AsyncIterator[bytes]:
    yield b"data: <html>this is not an event stream</html>\n\n"
