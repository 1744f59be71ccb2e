"""Fake OpenAI-compatible upstreams on free ports, each in a thread.

``FakeUpstream`` is the tests' upstream server (``upstream_server.py``) with OpenAI's defaults: its
``mode`` picks how it behaves (faults included) and can be changed while it runs; it records what it
received. ``RawUpstream`` is a bare socket server for the byte-level faults uvicorn cannot be made to
show: a TCP reset, a connection closed after the request arrived.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from conftest import RunningServer, running_server
from upstream_server import SLOW_SECONDS, UpstreamServer

__all__ = [
    "PIECES",
    "RAW_TEXT",
    "REASONING",
    "SLOW_SECONDS",
    "FakeUpstream",
    "RawUpstream",
    "upstream_gateway",
]

PIECES = ("Hel", "lo", ", w\u00f6rld", " \u2713", " \U0001f600", "!")
# What a thinking model's reasoning looks like from vLLM or llama-server (mode "reasoning").
REASONING = ("Let me ", "think.")


@dataclass
class FakeUpstream(UpstreamServer):
    """An OpenAI-compatible upstream at ``/v1``: PIECES every time (see ``upstream_server`` for the modes)."""

    pieces: tuple[str, ...] = PIECES
    thoughts: tuple[str, ...] = REASONING


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


# ---------------------------------------------------------------------- interference in front


def gateway_config(
    models: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
    *,
    head: tuple[str, ...] = ('log_level = "debug"', "parallel = 2", "ctx_size = 2048"),
) -> str:
    """A gateway file: model name -> (its options, its deployments), after the ``head`` settings."""
    lines = list(head)
    for name, (options, deployments) in models.items():
        lines += ["", "[[models]]", f"name = {json.dumps(name)}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        for d in deployments:
            lines += ["[[models.deployments]]", *(f"{k} = {json.dumps(v)}" for k, v in d.items())]
    return "\n".join(lines) + "\n"


@contextmanager
def gateway(
    tmp: Path, upstream: UpstreamServer, *, name: str = "up", kind: str = "openai", model: str = "upstream"
) -> Iterator[RunningServer]:
    """interference serving ``name`` from one started ``upstream`` (a ``kind`` deployment); stops it after."""
    config = tmp / "gateway.toml"
    deployment = {"type": kind, "base_url": upstream.url, "model": model}
    config.write_text(gateway_config({name: ({}, [deployment])}, head=()))
    try:
        with running_server("--config", str(config), "--no-embeddings", tmp=tmp) as server:
            yield server
    finally:
        upstream.stop()


@contextmanager
def upstream_gateway(tmp: Path, mode: str = "ok") -> Iterator[tuple[RunningServer, FakeUpstream]]:
    """interference serving model "up" from one ``FakeUpstream`` in ``mode`` (an ``openai`` deployment)."""
    upstream = FakeUpstream(mode=mode).start()
    with gateway(tmp, upstream) as server:
        yield server, upstream
