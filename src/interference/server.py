"""The HTTP server: uvicorn with a header timeout and a graceful shutdown of our own.

uvicorn closes idle keep-alive connections but has no limit on a request whose headers never
finish: a client that connects and drips (or sends nothing) holds a connection forever.
``header_timeout_protocol`` gives each request ``header_timeout`` seconds, counted from the
connection (or the request's first byte) to the end of its headers, then answers 408 and closes;
headers over 64 KiB get a 431. Malformed HTTP gets its 400 in OpenAI's envelope too.

On SIGTERM or SIGINT, ``GracefulServer`` stops accepting, turns ``/health`` to 503 and lets running
requests finish for ``shutdown_timeout`` seconds. Streams still running then end with an error
event and ``[DONE]``; anything left a moment later is cancelled. The process exits with 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .api.shutdown import Shutdown

__all__ = ["MAX_HEADER_BYTES", "GracefulServer", "header_timeout_protocol", "serve"]

logger = logging.getLogger(__name__)

# After the shutdown timeout, cut streams get this long to send their error event and [DONE].
_CUT_GRACE = 2.0

# Request line plus headers: llhttp sets no limit, so a client could send headers without end.
MAX_HEADER_BYTES = 64 * 1024


def _error_response(status: bytes, message: str, code: str) -> bytes:
    """A whole HTTP response holding OpenAI's error envelope, for errors before any ASGI app runs."""
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


_TIMED_OUT = _error_response(
    b"408 Request Timeout", "The request headers did not arrive in time.", "request_header_timeout"
)
_TOO_LARGE = _error_response(
    b"431 Request Header Fields Too Large",
    f"The request line and headers are larger than {MAX_HEADER_BYTES // 1024} KiB.",
    "request_header_too_large",
)


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with bounded request headers, and parse errors in our envelope.

    Headers must be complete within ``seconds`` of the connection (or of the request's first byte)
    and within ``MAX_HEADER_BYTES``; otherwise the client gets a 408 or 431 and the connection closes.
    """

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0  # raw bytes received while the headers are incomplete
        _parsed_bytes = 0  # request line and headers as parsed, for those that came in one read
        _too_large = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Still waiting for the end of the headers after this data: it all counts against them.
            if self._header_timer is not None:
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._refuse(_TOO_LARGE)

        def on_url(self, url: bytes) -> None:
            self._parsed(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._parsed(len(name) + len(value))
            super().on_header(name, value)

        def _parsed(self, size: int) -> None:
            self._parsed_bytes += size
            if self._parsed_bytes > MAX_HEADER_BYTES:
                self._too_large = True
                # The parser turns this into its error path, which ends in send_400_response.
                raise ValueError("request headers too large")

        def on_message_begin(self) -> None:
            self._parsed_bytes = 0
            super().on_message_begin()
            # A keep-alive connection's next request gets its own allowance.
            if self._header_timer is None:
                self._start_header_timer()

        def on_headers_complete(self) -> None:
            self._stop_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._stop_header_timer()
            if self._too_large:
                self.transport.write(_TOO_LARGE)
            else:
                self.transport.write(_error_response(b"400 Bad Request", msg, "invalid_http_request"))
            self.transport.close()

        def _start_header_timer(self) -> None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(seconds, self._refuse, _TIMED_OUT)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, response: bytes) -> None:
            self._stop_header_timer()
            if self.transport.is_closing():
                return
            # Only when no response is under way: a pipelined request must not cut its predecessor.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(response)
            self.transport.close()

    return HeaderTimeoutProtocol


class GracefulServer(uvicorn.Server):
    """uvicorn's server with our drain: health 503, streams cut with an error at the deadline, exit 0."""

    def __init__(self, config: uvicorn.Config, *, shutdown: Shutdown, timeout: float) -> None:
        super().__init__(config)
        self._drain = shutdown
        self._timeout = timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the caught signal once serving ends, so the process would die by
        # SIGTERM (or KeyboardInterrupt); a drained server has done its job and exits with 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        _freeze_startup_objects()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain.begin()
        logger.info("draining: running requests have %.0f s to finish", self._timeout)
        cut = asyncio.get_running_loop().call_later(self._timeout, self._drain.cut_streams)
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()


def _freeze_startup_objects() -> None:
    """Keep what start-up made out of the collector's full passes.

    The app, its models and the engines live as long as the process, about 90 000 objects; a full
    collection walked them all, 45 ms every few thousand agent requests, holding the GIL that the
    engine threads need between decodes. Frozen, a full pass walks only what was made since.
    """
    gc.collect()
    gc.freeze()


def serve(app: FastAPI, sock: socket.socket, settings: Settings, *, access_log: bool) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM or SIGINT, then drain."""
    options: dict[str, Any] = {
        "log_level": settings.log_level,
        "access_log": access_log,
        "log_config": None,
        "http": header_timeout_protocol(settings.header_timeout),
        # uvicorn's own limit is the backstop, after the streams were cut with an error at ours.
        "timeout_graceful_shutdown": settings.shutdown_timeout + _CUT_GRACE,
    }
    config = uvicorn.Config(app, **options)
    server = GracefulServer(
        config, shutdown=app.state.interference.shutdown, timeout=settings.shutdown_timeout
    )
    server.run(sockets=[sock])
