"""Server-sent events: the only place that writes ``data: ...`` frames, and the response that sends them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .cancellation import until_disconnect

__all__ = [
    "DONE",
    "HEADERS",
    "MAX_BATCH_BYTES",
    "MEDIA_TYPE",
    "EventStream",
    "encode",
    "encode_event",
]

MEDIA_TYPE = "text/event-stream"
# Proxies (nginx) buffer responses unless told not to; each token must go out as it is made.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
# Frames that are ready together go out in one write of at most this many bytes (or one frame).
MAX_BATCH_BYTES = 64 * 1024


def encode(payload: dict[str, Any] | bytes) -> bytes:
    """One SSE event holding a JSON object (or already-encoded JSON bytes)."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def encode_event(event: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event (``event: <type>`` before the data), as the Responses API streams them."""
    return b"event: " + event.encode("ascii") + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class _Started:
    """The rest of a coroutine that was run by hand up to its first suspension: awaiting this goes on
    with it exactly where it stopped (what ``await`` would have done, one step later)."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, bytes], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, bytes]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in by the task: passed on as it is
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    result: bytes = stop.value
                    return result
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    result = stop.value
                    return result


def _step(coro: Coroutine[Any, Any, bytes]) -> bytes | _Started:
    """Run ``coro`` until it finishes (its result) or first waits (the rest of it, to await)."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        result: bytes = stop.value
        return result
    return _Started(coro, yielded)


async def _abandon(rest: _Started) -> None:
    """End a source step that will not be awaited: it gets the cancellation it would have got, and its
    cleanup runs to its end."""
    try:
        yielded = rest._coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration, StopAsyncIteration, Exception):
        return
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
        await _Started(rest._coro, yielded)


class EventStream(StreamingResponse):
    """An event-stream response.

    - Frames that are ready together go out in one write (up to ``MAX_BATCH_BYTES``): an upstream sends
      many events in one packet, and a local engine many tokens in one step, and each write crosses the
      ASGI send chain and the socket. Nothing is held back while the source waits. The last frames go
      out with the end of the stream (its final chunk), in the same write.
    - The client's disconnect cancels the stream (its source's cleanup runs, as for any cancellation),
      through one watcher task, where Starlette's own response runs a task group for it.
    """

    def __init__(self, frames: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(frames, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})
        self._frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))  # a client that left ends it
        finally:
            close = getattr(self._frames, "aclose", None)
            if close is not None:
                await close()
        if self.background is not None:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        batch: list[bytes] = []
        size = 0
        pending: _Started | None = None  # a source step begun by hand, not awaited yet

        async def flush() -> None:
            nonlocal batch, size
            if batch:
                body, batch, size = b"".join(batch), [], 0
                await send({"type": "http.response.body", "body": body, "more_body": True})

        try:
            while True:
                try:
                    # An async generator's ``__anext__`` steps like a coroutine (send, throw, close).
                    step = _step(self._frames.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    break
                if isinstance(step, bytes):
                    batch.append(step)
                    size += len(step)
                    if size >= MAX_BATCH_BYTES:
                        await flush()
                    continue
                pending = step
                await flush()  # what is ready goes out before waiting for the source
                rest, pending = pending, None
                try:
                    frame = await rest
                except StopAsyncIteration:
                    break
                batch, size = [frame], len(frame)
        finally:
            if pending is not None:
                await _abandon(pending)
        # The last frames and the end of the stream in one write.
        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": False})
