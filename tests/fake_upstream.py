"""Fake OpenAI-compatible upstreams on free ports, each in a thread.

``FakeUpstream`` is a real uvicorn server: its ``mode`` picks how it behaves and can be changed while
it runs; it records what it received. ``RawUpstream`` is a bare socket server for the byte-level
faults uvicorn cannot be made to show: a TCP reset, a connection closed after the request arrived.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import RunningServer, running_server

MODES = (
    "ok",  # answers normally
    "slow",  # waits SLOW_SECONDS before answering
    "500",
    "429",
    "400",  # the request's fault, in OpenAI's error shape
    "403",  # the key is valid but may not use this model
    "echo_key_401",  # a 401 that quotes the Authorization header it got
    "echo_key_500",  # a 500 that quotes it
    "garbage",  # 200, then bytes that are not OpenAI JSON
    "garbage_mid",  # two good chunks, then garbage
    "torn",  # two good chunks, then the connection drops
    "stall_mid",  # two good chunks, then silence for SLOW_SECONDS (a drip slower than a timeout)
    "not_sse",  # 200 text/event-stream whose body is JSON lines, not SSE events
    "tools",  # a tool call instead of text
    "reasoning",  # reasoning_content (REASONING) before the text, as thinking models send it
)
SLOW_SECONDS = 5.0
PIECES = ("Hel", "lo", ", w\u00f6rld", " \u2713", " \U0001f600", "!")


@dataclass
class FakeUpstream:
    mode: str = "ok"
    pieces: tuple[str, ...] = PIECES
    token_delay: float = 0.0
    retry_after: str | None = None  # a Retry-After header on error answers
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
                Route("/v1/responses", self._responses, methods=["POST"]),
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
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
        if mode in ("500", "429", "400", "403"):
            return _error(int(mode), f"fake upstream says {mode}", headers=headers)
        if mode == "echo_key_401":
            return _error(401, f"Incorrect API key provided: {key}", code="invalid_api_key")
        if mode == "echo_key_500":
            return _error(500, f"internal error while checking {key}")
        is_chat = request.url.path.endswith("/chat/completions")
        if mode == "garbage":
            if body.get("stream"):
                return StreamingResponse(_garbage(), media_type="text/event-stream")
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        if mode == "not_sse" and body.get("stream"):
            lines = b"".join(orjson.dumps(c) + b"\n" for c in self._chunks(body, is_chat=is_chat, mode=mode))
            return Response(lines, media_type="text/event-stream")
        if body.get("stream"):
            return StreamingResponse(
                self._events(body, is_chat=is_chat, mode=mode), media_type="text/event-stream"
            )
        return JSONResponse(self._whole(body, is_chat=is_chat, mode=mode))

    async def _responses(self, request: Request) -> Response:
        """/v1/responses served natively: the raw body is recorded; errors as ``_handle`` gives them."""
        body = orjson.loads(await request.body())
        self.hits += 1
        self.keys.append(request.headers.get("authorization"))
        self.bodies.append(body)
        if self.mode in ("500", "429", "400", "403"):
            return _error(int(self.mode), f"fake upstream says {self.mode}")
        text = "".join(self.pieces)
        message = {
            "type": "message", "id": "msg_up", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }  # fmt: skip
        whole = {
            "id": f"resp_up{self.hits}", "object": "response", "created_at": 1, "status": "completed",
            "model": body["model"], "output": [message], "store": body.get("store", True),
            "usage": {
                "input_tokens": 11, "output_tokens": len(self.pieces), "total_tokens": 11 + len(self.pieces),
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }  # fmt: skip
        if not body.get("stream"):
            return JSONResponse(whole)
        opening = {**whole, "status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": opening},
            *({"type": "response.output_text.delta", "item_id": "msg_up", "output_index": 0,
               "content_index": 0, "delta": piece} for piece in self.pieces),
            {"type": "response.completed", "response": whole},
        ]  # fmt: skip
        frames = b"".join(
            b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps({**e, "sequence_number": i}))
            for i, e in enumerate(events)
        )
        return Response(frames, media_type="text/event-stream")

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
            if mode == "reasoning":
                message["reasoning_content"] = "".join(REASONING)
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
            for i, chunk in enumerate(self._chunks(body, is_chat=is_chat, mode=mode)):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if mode == "stall_mid" and i == 3:  # the role chunk and two pieces went out
                    await asyncio.sleep(SLOW_SECONDS)
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
                if mode == "reasoning":
                    chunks.extend(chat({"reasoning_content": piece}) for piece in REASONING)
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


# What a thinking model's reasoning looks like from vLLM or llama-server (mode "reasoning").
REASONING = ("Let me ", "think.")

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


def _error(
    status: int, message: str, *, code: str | None = "fake_code", headers: dict[str, str] | None = None
) -> Response:
    error = {
        "message": message,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": "messages" if status == 400 else None,
        "code": code,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _garbage() -> AsyncIterator[bytes]:
    yield b"data: <html>this is not an event stream</html>\n\n"


# ---------------------------------------------------------------------- byte-level faults

RAW_MODES = (
    "reset_mid_stream",  # a 200 event stream: the role chunk and two pieces, then a TCP reset
    "answer_then_close",  # on each connection: answers the first request, reads the next, closes unanswered
)
RAW_TEXT = "Hello"
RAW_PIECES = ("", "Hel", "lo")  # the role chunk, then two pieces


@dataclass
class RawUpstream:
    """A blocking socket server in a thread; ``requests`` counts the requests that reached it."""

    mode: str = "reset_mid_stream"
    requests: int = 0
    connections: int = 0
    port: int = 0
    _listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> RawUpstream:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            try:
                for answered in range(2):
                    if not _read_request(reader):
                        return
                    self.requests += 1
                    if self.mode == "reset_mid_stream":
                        conn.sendall(_RAW_STREAM_HEAD + b"".join(_chunk(_raw_event(p)) for p in RAW_PIECES))
                        time.sleep(0.2)  # the pieces reach the client before the reset
                        _reset(conn)
                        return
                    if answered:  # "answer_then_close": the second request is read, never answered
                        return
                    body = orjson.dumps(_RAW_REPLY)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            except OSError:
                return
            finally:
                reader.close()


def _read_request(reader: Any) -> bool:
    """Reads one request off the connection; False when the client closed it instead."""
    length = 0
    while True:
        line = reader.readline(65536)
        if not line:
            return False
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    reader.read(length)
    return True


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _raw_event(piece: str) -> bytes:
    delta = {"role": "assistant", "content": ""} if not piece else {"content": piece}
    chunk = {"id": "raw-1", "object": "chat.completion.chunk", "created": 1, "model": "raw",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


_RAW_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_RAW_REPLY = {
    "id": "chatcmpl-raw",
    "object": "chat.completion",
    "created": 1,
    "model": "raw",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": RAW_TEXT}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@contextmanager
def upstream_gateway(tmp: Path, mode: str = "ok") -> Iterator[tuple[RunningServer, FakeUpstream]]:
    """interference serving model "up" from one ``FakeUpstream`` in ``mode`` (an ``openai`` deployment)."""
    upstream = FakeUpstream(mode=mode).start()
    config = tmp / "gateway.toml"
    config.write_text(
        f'[[models]]\nname = "up"\n[[models.deployments]]\ntype = "openai"\n'
        f'base_url = "{upstream.url}"\nmodel = "upstream"\n'
    )
    try:
        with running_server("--config", str(config), "--no-embeddings", tmp=tmp) as server:
            yield server, upstream
    finally:
        upstream.stop()
