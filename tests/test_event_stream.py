"""The event-stream response: frames ready together go out in one write, a disconnect ends the stream.

These drive the ASGI response directly, with a recording ``send``: what matters is which writes it
makes and when, which a client on a socket cannot observe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from interference.api import sse


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # each write's frames, the last write's included
        self.ended = False
        self.last = b""  # what the stream's end carried

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if message["body"]:
                self.bodies.append(message["body"])
            if not message.get("more_body"):
                self.ended = True
                self.last = message["body"]


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


SCOPE = {"type": "http", "asgi": {"spec_version": "2.3"}}


def test_ready_frames_are_joined_and_waiting_ones_are_not_held_back() -> None:
    asyncio.run(_ready_frames_are_joined_and_waiting_ones_are_not_held_back())


async def _ready_frames_are_joined_and_waiting_ones_are_not_held_back() -> None:
    gate = asyncio.Event()
    seen_while_waiting: list[int] = []
    rec = Recorder()

    async def frames() -> AsyncIterator[bytes]:
        for i in range(3):
            yield sse.encode({"i": i})
        seen_while_waiting.append(len(rec.bodies))  # what went out before the source waits
        await gate.wait()
        yield sse.encode({"i": 3})
        yield sse.encode({"i": 4})
        await asyncio.sleep(0)
        yield sse.DONE

    async def open_gate() -> None:
        await asyncio.sleep(0.01)
        gate.set()

    opener = asyncio.ensure_future(open_gate())
    await sse.EventStream(frames())(SCOPE, never_disconnects, rec.send)
    await opener
    assert rec.bodies == [
        b"".join(sse.encode({"i": i}) for i in range(3)),
        sse.encode({"i": 3}) + sse.encode({"i": 4}),
        sse.DONE,
    ]
    assert seen_while_waiting == [0]  # the first three were still being gathered, not yet sent
    assert rec.ended
    assert rec.last == sse.DONE  # the last frames go out with the end of the stream, in one write


def test_a_batch_is_bounded() -> None:
    asyncio.run(_a_batch_is_bounded())


async def _a_batch_is_bounded() -> None:
    frame = b"data: " + b"x" * 1000 + b"\n\n"

    async def frames() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield frame

    rec = Recorder()
    await sse.EventStream(frames())(SCOPE, never_disconnects, rec.send)
    assert b"".join(rec.bodies) == frame * 200
    assert len(rec.bodies) > 1
    assert all(len(b) < sse.MAX_BATCH_BYTES + len(frame) for b in rec.bodies)


def test_a_disconnect_cancels_the_source_and_ends_quietly() -> None:
    asyncio.run(_a_disconnect_cancels_the_source_and_ends_quietly())


async def _a_disconnect_cancels_the_source_and_ends_quietly() -> None:
    closed = asyncio.Event()
    cancelled: list[bool] = []

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield sse.encode({"i": 0})
            await asyncio.Event().wait()  # a source that never sends again
            yield sse.DONE
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finally:
            closed.set()

    async def disconnects() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    rec = Recorder()
    await asyncio.wait_for(sse.EventStream(frames())(SCOPE, disconnects, rec.send), timeout=5)
    assert closed.is_set() and cancelled == [True]
    assert rec.bodies == [sse.encode({"i": 0})]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the cancellation was the stream's own


def test_a_cancellation_from_outside_is_not_absorbed() -> None:
    asyncio.run(_a_cancellation_from_outside_is_not_absorbed())


async def _a_cancellation_from_outside_is_not_absorbed() -> None:
    async def frames() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield sse.DONE

    rec = Recorder()
    task = asyncio.ensure_future(sse.EventStream(frames())(SCOPE, never_disconnects, rec.send))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_slow_client_disconnecting_mid_write_closes_the_waiting_source() -> None:
    asyncio.run(_a_slow_client_disconnecting_mid_write_closes_the_waiting_source())


async def _a_slow_client_disconnecting_mid_write_closes_the_waiting_source() -> None:
    """The send suspends (a full socket buffer) while a source step has begun: the disconnect that
    arrives then still reaches the source, whose cleanup runs."""
    cleaned = asyncio.Event()
    release = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await release.wait()
            yield b"data: 2\n\n"
        finally:
            cleaned.set()

    async def slow_send(message: dict[str, Any]) -> None:
        if message.get("body"):
            await asyncio.Event().wait()  # the client never reads again

    async def disconnects() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    await asyncio.wait_for(sse.EventStream(frames())(SCOPE, disconnects, slow_send), timeout=5)
    assert cleaned.is_set()


TEXTS = [
    "",
    "plain",
    'a "quote" and a \\ backslash',
    "two\nlines\r\n",
    "—dashes… and ünïcode",
    "\u2028\u2029",
    "🙂",
    "\x00\x1f\x7f",
]


@pytest.mark.parametrize("text", TEXTS)
def test_frames_written_from_templates_are_those_the_encoders_write(text: str) -> None:
    """The frames a stream repeats are written from templates; they must be the generic bytes."""
    from interference.api import messages
    from interference.api.serving import ChunkEnvelope

    for index in (0, 7, 12):
        delta = {"type": "text_delta", "text": text}
        expected = sse.encode_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
        assert messages._text_delta(index, text) == expected
        stop = sse.encode_event("content_block_stop", {"type": "content_block_stop", "index": index})
        assert messages._block_stop(index) == stop
    assert sse.encode_event("ping", {"type": "ping"}) == messages._PING
    assert sse.encode_event("message_stop", {"type": "message_stop"}) == messages._MESSAGE_STOP

    envelope = ChunkEnvelope(f"chatcmpl-{text}", "chat.completion.chunk", 1_700_000_000, f"model {text}")
    choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    assert envelope.frame(choice) == sse.encode(envelope([choice]))
