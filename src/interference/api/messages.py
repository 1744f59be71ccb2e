"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API.

Backends answer in one of two ways. OpenAI-shaped ones (the local engine, OpenAI-compatible
upstreams) stream chat deltas, which become a message here: content blocks ``text`` then ``tool_use``
(``toolu_`` ids, ``input`` as an object), Anthropic's ``stop_reason`` and usage (``input_tokens`` is
the prompt less its cached part, ``cache_read_input_tokens`` the cached part). Streams use named SSE
events in Anthropic's order: ``message_start`` (with the input usage when the backend reports it
early), ``ping``, per block ``content_block_start`` / ``content_block_delta``… / ``content_block_stop``,
``message_delta`` (stop reason, stop sequence, usage), ``message_stop``. Native Anthropic upstreams
yield their own events, relayed as they come with ``model`` set to the name the client asked for.

A failure after the first byte is one ``error`` event, and the stream ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from starlette.responses import Response

from ..errors import InterferenceError
from ..protocol import CountTokensRequest, MessagesRequest
from ..protocol.anthropic import anthropic_id
from ..protocol.anthropic_openai import stop_reason
from ..providers.base import Delta, MessageEvent, TokenUsage, aclose_stream
from ..router import Router
from . import sse
from .errors import anthropic_error_body
from .request_log import RequestRecord
from .serving import FastJSONResponse, UsageTally, fold, guarded, iter_all, open_stream, settle_usage
from .shutdown import Shutdown

__all__ = ["MessagesServing"]

logger = logging.getLogger(__name__)

Item = Delta | MessageEvent
# Thinking blocks of OpenAI-shaped backends carry no signature of Anthropic's; this marks them as ours.
THINKING_SIGNATURE = "interference"


class MessagesServing:
    def __init__(self, router: Router, shutdown: Shutdown) -> None:
        self._router = router
        self._shutdown = shutdown

    async def create(self, request: MessagesRequest, *, record: RequestRecord | None = None) -> Response:
        first, stream = await open_stream(self._router.messages(request), record)
        if isinstance(first, MessageEvent):
            if not request.stream:
                await aclose_stream(stream)
                return FastJSONResponse({**first.data, "model": request.model})
            return _streaming(_relay(request.model, first, stream, self._shutdown))
        deltas = cast(AsyncIterator[Delta], stream)
        draft = _Draft(request.model)
        if not request.stream:
            folded = await fold(first, deltas, record)
            blocks = draft.blocks(folded.text(0), folded.calls(0), folded.reasoning(0))
            reason = stop_reason(folded.finish.get(0), folded.stop_sequences.get(0))
            return FastJSONResponse(draft.message(blocks, reason, folded.stop_sequences.get(0), folded.usage))
        return _streaming(draft.events(first, deltas, self._shutdown, record))

    async def count_tokens(self, request: CountTokensRequest) -> Response:
        return FastJSONResponse({"input_tokens": await self._router.count_tokens(request)})


def _streaming(events: AsyncIterator[bytes]) -> sse.EventStream:
    return sse.EventStream(events)


def _usage(usage: TokenUsage | None) -> dict[str, int]:
    prompt, cached, output = (
        (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) if usage else (0, 0, 0)
    )
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
    }


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        logger.warning("a tool call's arguments are not a JSON object; sent as an empty input")
        return {}
    return value


# The frames a stream sends most, written once or from a template: a text delta is its text spliced in.
_PING = sse.encode_event("ping", {"type": "ping"})
_MESSAGE_STOP = sse.encode_event("message_stop", {"type": "message_stop"})


def _text_delta(index: int, text: str) -> bytes:
    """``content_block_delta`` with a ``text_delta``: the bytes ``sse.encode_event`` makes of it."""
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
        b'"delta":{"type":"text_delta","text":%s}}\n\n' % (index, orjson.dumps(text))
    )


def _block_stop(index: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % index


def _error_event(exc: InterferenceError) -> bytes:
    return sse.encode_event("error", anthropic_error_body(exc))


class _Draft:
    """One message built from chat deltas: its id, the public model name, tool ids as Anthropic's."""

    def __init__(self, model: str) -> None:
        self.id = anthropic_id("msg")
        self.model = model

    @staticmethod
    def tool_id(call_id: Any) -> str:
        return call_id if isinstance(call_id, str) and call_id.startswith("toolu_") else anthropic_id("toolu")

    def blocks(self, text: str, calls: list[dict[str, Any]], reasoning: str = "") -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reasoning:
            blocks.append({"type": "thinking", "thinking": reasoning, "signature": THINKING_SIGNATURE})
        if text or not calls:
            blocks.append({"type": "text", "text": text})
        for call in calls:
            fn = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": self.tool_id(call.get("id")),
                    "name": fn.get("name"),
                    "input": _input(fn.get("arguments", "")),
                }
            )
        return blocks

    def message(
        self,
        content: list[dict[str, Any]],
        reason: str | None,
        sequence: str | None,
        usage: TokenUsage | None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence if reason == "stop_sequence" else None,
            "usage": _usage(usage),
        }

    def events(
        self,
        first: Delta | None,
        stream: AsyncIterator[Delta],
        shutdown: Shutdown,
        record: RequestRecord | None = None,
    ) -> AsyncIterator[bytes]:
        tally = UsageTally()
        return guarded(
            self._events(first, stream, tally),
            source=stream,
            shutdown=shutdown,
            error_frame=_error_event,
            what="messages stream",
            on_close=settle_usage(record, tally),
        )

    async def _events(
        self, first: Delta | None, stream: AsyncIterator[Delta], tally: UsageTally
    ) -> AsyncIterator[bytes]:
        def event(kind: str, **payload: Any) -> bytes:
            return sse.encode_event(kind, {"type": kind, **payload})

        index = -1  # the open content block, -1 before the first
        open_kind: str | None = None  # "text" or the tool call index it streams
        finish: str | None = None
        sequence: str | None = None
        early = first.usage if first is not None else None
        opening = TokenUsage(early.prompt_tokens, 0, early.cached_tokens) if early else None
        yield event("message_start", message=self.message([], None, None, opening))
        yield _PING

        def stop(kind: str | None) -> list[bytes]:
            if kind is None:
                return []
            signed = []
            if kind == "thinking":  # clients send thinking blocks back with their signature
                signature = {"type": "signature_delta", "signature": THINKING_SIGNATURE}
                signed.append(event("content_block_delta", index=index, delta=signature))
            return [*signed, _block_stop(index)]

        async for delta in iter_all(first, stream):
            if delta.index != 0:
                continue
            if delta.reasoning:
                if open_kind != "thinking":
                    for frame in stop(open_kind):
                        yield frame
                    index, open_kind = index + 1, "thinking"
                    thinking = {"type": "thinking", "thinking": "", "signature": ""}
                    yield event("content_block_start", index=index, content_block=thinking)
                thought = {"type": "thinking_delta", "thinking": delta.reasoning}
                yield event("content_block_delta", index=index, delta=thought)
            if delta.text:
                if open_kind != "text":
                    for frame in stop(open_kind):
                        yield frame
                    index, open_kind = index + 1, "text"
                    yield event(
                        "content_block_start", index=index, content_block={"type": "text", "text": ""}
                    )
                yield _text_delta(index, delta.text)
            for piece in delta.tool_calls or ():
                call = f"call{piece.get('index', 0)}"
                fn = piece.get("function") or {}
                if open_kind != call:
                    for frame in stop(open_kind):
                        yield frame
                    index, open_kind = index + 1, call
                    block: dict[str, Any] = {
                        "type": "tool_use",
                        "id": self.tool_id(piece.get("id")),
                        "name": fn.get("name") or "",
                        "input": {},
                    }
                    yield event("content_block_start", index=index, content_block=block)
                if fn.get("arguments"):
                    partial = {"type": "input_json_delta", "partial_json": fn["arguments"]}
                    yield event("content_block_delta", index=index, delta=partial)
            if delta.finish_reason is not None:
                finish, sequence = delta.finish_reason, delta.stop_sequence
            tally.add(delta.usage)
        for frame in stop(open_kind):
            yield frame
        reason = stop_reason(finish, sequence)
        ending = {"stop_reason": reason, "stop_sequence": sequence if reason == "stop_sequence" else None}
        yield event("message_delta", delta=ending, usage=_usage(tally.usage))
        yield _MESSAGE_STOP


def _relay(
    model: str, first: MessageEvent, stream: AsyncIterator[Item], shutdown: Shutdown
) -> AsyncIterator[bytes]:
    """A native upstream's events as they come; ``message_start`` names the model the client asked for."""

    async def frames() -> AsyncIterator[bytes]:
        async for item in iter_all(first, stream):
            if not isinstance(item, MessageEvent):
                continue
            data = item.data
            if item.name == "message_start" and isinstance(data.get("message"), dict):
                data = {**data, "message": {**data["message"], "model": model}}
            yield sse.encode_event(item.name, data)

    return guarded(
        frames(), source=stream, shutdown=shutdown, error_frame=_error_event, what="messages stream"
    )
