"""Shaping the local engine's per-choice output: merging n choices, tool calls, logprobs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from ..engine import TokenLogprob
from ..protocol import Tool
from .base import Delta, aclose_stream
from .tools import TOOL_CALL_OPEN, calls_from_json, parse_tagged_calls

__all__ = ["chat_logprobs", "completion_logprobs", "merge", "shape_tool_calls"]

_END = object()


async def merge(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
    """Interleave the choices of one request as their deltas arrive; closing it closes them all."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield delta
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put(delta)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(_END)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await aclose_stream(stream)


def _call_deltas(index: int, calls: list[dict[str, Any]], last: Delta) -> list[Delta]:
    """Tool calls as OpenAI streams them: id and name first, then the arguments, then the finish."""
    out = []
    for i, call in enumerate(calls):
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        out.append(Delta(index=index, tool_calls=(head,)))
        out.append(
            Delta(
                index=index,
                tool_calls=({"index": i, "function": {"arguments": call["function"]["arguments"]}},),
            )
        )
    out.append(dataclasses.replace(last, text="", finish_reason="tool_calls", tool_calls=None))
    return out


async def shape_tool_calls(
    stream: AsyncIterator[Delta], *, tools: list[Tool], constrained: bool
) -> AsyncIterator[Delta]:
    """Turn one choice's text into tool-call deltas where it holds calls.

    Constrained output is all JSON: it is held back and parsed at the end. Free output is streamed as
    usual unless it opens with ``<tool_call>``; only that opening is held back while undecided.
    """
    held: list[Delta] = []
    text = ""
    deciding = not constrained
    holding = constrained
    async for delta in stream:
        if not holding and not deciding:
            yield delta
            continue
        held.append(delta)
        text += delta.text
        if deciding:
            head = text.lstrip()
            if head.startswith(TOOL_CALL_OPEN):
                deciding, holding = False, True
            elif not TOOL_CALL_OPEN.startswith(head) or delta.finish_reason is not None:
                deciding = False
                for d in held:
                    yield d
                held = []
                continue
        if delta.finish_reason is None:
            continue
        calls = calls_from_json(text) if constrained else parse_tagged_calls(text, tools)
        if calls and delta.finish_reason == "stop":
            for d in _call_deltas(delta.index, calls, delta):
                yield d
        else:
            for d in held:
                yield d
        held = []


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The chat completions ``logprobs`` object for these tokens."""
    return {
        "content": [
            {
                "token": e.token.decode("utf-8", errors="replace"),
                "logprob": e.logprob,
                "bytes": list(e.token),
                "top_logprobs": [
                    {"token": t.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(t)}
                    for t, lp in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset`` is where these tokens' text starts."""
    tokens = [e.token.decode("utf-8", errors="replace") for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.decode("utf-8", errors="replace"): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }
