"""What chat and text completions share: opening a delta stream, folding it, framing it as SSE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from starlette.responses import JSONResponse

from ..errors import InterferenceError
from ..providers.base import Delta, TokenUsage, aclose_stream
from . import sse
from .errors import error_body
from .request_log import RequestRecord
from .shutdown import Shutdown

__all__ = [
    "ChunkEnvelope",
    "FastJSONResponse",
    "Folded",
    "UsageTally",
    "guarded",
    "open_stream",
    "settle_usage",
    "sse_frames",
    "usage_dict",
]


class FastJSONResponse(JSONResponse):
    """A JSON response written by orjson: Starlette's own uses the standard library, which took 0.1 ms
    for a Responses answer that echoes an agent's instructions and tools."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")


async def open_stream(
    stream: AsyncIterator[ItemT], record: RequestRecord | None = None
) -> tuple[ItemT | None, AsyncIterator[ItemT]]:
    """Wait for the first delta, so validation, routing and admission errors surface before any byte.

    Its arrival is the time to first token that the access log reports.
    """
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return None, stream
    except BaseException:
        await aclose_stream(stream)
        raise
    if record is not None:
        record.first_output()
    return first, stream


async def iter_all(first: ItemT | None, stream: AsyncIterator[ItemT]) -> AsyncIterator[ItemT]:
    if first is not None:
        yield first
    async for delta in stream:
        yield delta


def usage_dict(usage: TokenUsage | None) -> dict[str, Any]:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


@dataclass(frozen=True, slots=True)
class ChunkEnvelope:
    """What every body and chunk of one completion repeats around its choices (chat's and text's).

    A stream's chunks differ only in their choices, so the envelope is written to JSON once
    (``frame``), not once a token.
    """

    id: str
    object: str
    created: int
    model: str
    _head: bytes = field(init=False, repr=False, compare=False)  # ``data: {..."choices":``

    def __post_init__(self) -> None:
        written = orjson.dumps(self([]))
        assert written.endswith(b"[]}")
        object.__setattr__(self, "_head", b"data: " + written[:-3])

    def frame(self, choice: dict[str, Any]) -> bytes:
        """One chunk holding one choice, as an SSE frame (the bytes ``sse.encode(self([choice]))`` makes)."""
        return b"%s[%s]}\n\n" % (self._head, orjson.dumps(choice))

    def __call__(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def usage_chunk(self, usage: TokenUsage) -> dict[str, Any]:
        """The chunk after the last choice's finish, when ``stream_options.include_usage`` asks for it."""
        return {**self([]), "usage": usage_dict(usage)}


@dataclass(slots=True)
class UsageTally:
    """Usage of a whole request from its choices' final deltas: they share the prompt, completions add up."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: TokenUsage | None) -> None:
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.cached_tokens = usage.cached_tokens
            self.completion_tokens += usage.completion_tokens

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


@dataclass(slots=True)
class Folded:
    """A whole stream folded into one answer per choice."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    reasonings: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, dict[str, Any]]] = field(
        default_factory=dict
    )  # choice -> call index -> call
    logprobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    stop_sequences: dict[int, str] = field(default_factory=dict)
    tally: UsageTally = field(default_factory=UsageTally)

    def text(self, index: int) -> str:
        return "".join(self.texts.get(index, []))

    def reasoning(self, index: int) -> str:
        return "".join(self.reasonings.get(index, []))

    def calls(self, index: int) -> list[dict[str, Any]]:
        return [call for _, call in sorted(self.tool_calls.get(index, {}).items())]

    def add_tool_calls(self, index: int, deltas: tuple[dict[str, Any], ...]) -> None:
        """Merge streamed tool-call pieces: the first carries id and name, later ones more arguments."""
        calls = self.tool_calls.setdefault(index, {})
        for piece in deltas:
            position = piece.get("index", len(calls))
            function = piece.get("function") or {}
            call = calls.get(position)
            if call is None:
                call = calls[position] = {
                    "id": piece.get("id"),
                    "type": piece.get("type") or "function",
                    "function": {"name": function.get("name") or "", "arguments": ""},
                }
            call["id"] = call["id"] or piece.get("id")
            call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def add_logprobs(self, index: int, logprobs: dict[str, Any]) -> None:
        """Concatenate the per-token lists (chat ``content``, or the legacy parallel lists)."""
        folded = self.logprobs.setdefault(index, {})
        for key, value in logprobs.items():
            if isinstance(value, list):
                folded.setdefault(key, []).extend(value)
            else:
                folded.setdefault(key, value)

    @property
    def indices(self) -> list[int]:
        return sorted(self.texts.keys() | self.finish.keys() | self.tool_calls.keys()) or [0]

    @property
    def usage(self) -> TokenUsage:
        return self.tally.usage


async def fold(
    first: Delta | None, stream: AsyncIterator[Delta], record: RequestRecord | None = None
) -> Folded:
    out = Folded()
    try:
        async for delta in iter_all(first, stream):
            if delta.text:
                out.texts.setdefault(delta.index, []).append(delta.text)
            if delta.reasoning:
                out.reasonings.setdefault(delta.index, []).append(delta.reasoning)
            if delta.finish_reason is not None:
                out.finish[delta.index] = delta.finish_reason
            if delta.stop_sequence is not None:
                out.stop_sequences[delta.index] = delta.stop_sequence
            if delta.tool_calls:
                out.add_tool_calls(delta.index, delta.tool_calls)
            if delta.logprobs:
                out.add_logprobs(delta.index, delta.logprobs)
            out.tally.add(delta.usage)
    finally:
        await aclose_stream(stream)
        if record is not None:
            record.usage = out.usage
    return out


def sse_frames(
    first: Delta | None,
    stream: AsyncIterator[Delta],
    *,
    chunks: Callable[[Delta], list[bytes]],
    openings: list[bytes],
    usage_chunk: Callable[[TokenUsage], dict[str, Any]] | None,
    shutdown: Shutdown,
    record: RequestRecord | None = None,
) -> AsyncIterator[bytes]:
    """Frame deltas as SSE: opening frames, a delta's frames (``chunks``), usage chunk, then ``[DONE]``.

    A failure after the first byte becomes one error event in the normal envelope, then ``[DONE]``;
    so does a stream cut at the shutdown deadline.
    """
    tally = UsageTally()

    async def frames() -> AsyncIterator[bytes]:
        for opening in openings:
            yield opening
        async for delta in iter_all(first, stream):
            for frame in chunks(delta):
                yield frame
            tally.add(delta.usage)
        if usage_chunk is not None:
            yield sse.encode(usage_chunk(tally.usage))

    return guarded(
        frames(),
        source=stream,
        shutdown=shutdown,
        error_frame=lambda exc: sse.encode(error_body(exc).model_dump()),
        what="stream",
        on_close=settle_usage(record, tally),
        trailer=sse.DONE,
    )


async def guarded(
    frames: AsyncIterator[bytes],
    *,
    source: AsyncIterator[Any],
    shutdown: Shutdown,
    error_frame: Callable[[InterferenceError], bytes],
    what: str,
    on_close: Callable[[], None] | None = None,
    trailer: bytes | None = None,
) -> AsyncIterator[bytes]:
    """Relay a stream's frames once its first byte may have gone out, the one way every route does.

    A failure becomes one ``error_frame``: an ``InterferenceError`` as it is, anything else as a
    generic server error (logged with its traceback); so does a stream that ``shutdown`` cut at its
    deadline. Whatever happens, the source stream is closed (freeing its slot or connection) and
    ``on_close`` runs; ``trailer`` ends a stream that was not cancelled or closed by the client.
    """
    task = shutdown.track()
    try:
        async for frame in frames:
            yield frame
    except asyncio.CancelledError:
        if not shutdown.claim(task):
            raise
        yield error_frame(shutdown.error())
    except InterferenceError as exc:
        logger.warning("%s failed after it started: %r", what, exc)
        yield error_frame(exc)
    except Exception:
        logger.exception("%s failed after it started", what)
        yield error_frame(InterferenceError("The server had an error while streaming."))
    finally:
        shutdown.untrack(task)
        await aclose_stream(frames)
        await aclose_stream(source)
        if on_close is not None:
            on_close()
    if trailer is not None:
        yield trailer


def settle_usage(record: RequestRecord | None, tally: UsageTally) -> Callable[[], None] | None:
    """What ``guarded`` runs at the end of a stream: the request's record takes the usage tallied."""
    if record is None:
        return None

    def settle() -> None:
        record.usage = tally.usage

    return settle
