"""A Responses answer built from chat deltas: its output items, its events in OpenAI's order, its final form.

Items open and close in the order the deltas ask for them: ``reasoning`` (from ``Delta.reasoning``), a
``message`` (from text), one ``function_call`` or ``custom_tool_call`` per tool call. Each item is
announced by ``response.output_item.added`` and ended by ``response.output_item.done``; between them
come its own events: ``response.reasoning_summary_part.added`` / ``…_text.delta`` / ``…_text.done`` /
``…_part.done``; ``response.content_part.added`` / ``response.output_text.delta`` / ``…_text.done`` /
``response.content_part.done``; ``response.function_call_arguments.delta`` / ``.done``;
``response.custom_tool_call_input.delta`` / ``.done``. Streaming and non-streaming answers come from the
same builder: the JSON body is the stream folded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..protocol import ResponseRequest, response_item_id
from ..protocol.responses_chat import ToolName, custom_input, tool_call_item
from ..providers.base import Delta, TokenUsage

__all__ = ["Event", "ResponseBuilder", "response_usage"]

# Chat finish reasons that leave a response incomplete, and the reason OpenAI gives for each.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}

Event = tuple[str, dict[str, Any]]


def response_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


@dataclass(slots=True)
class _Open:
    """The item being streamed: its kind, id, place in ``output`` and what it holds so far."""

    kind: str  # "reasoning", "message" or "call"
    item_id: str
    index: int
    chunks: list[str] = field(default_factory=list)
    call: dict[str, Any] | None = None  # a tool call: {"id", "function": {"name", "arguments"}}


class ResponseBuilder:
    """Turns the deltas of choice 0 into Responses events and output items."""

    def __init__(
        self, request: ResponseRequest, names: dict[str, ToolName], *, previous_id: str | None
    ) -> None:
        self.request = request
        self.names = names
        self.previous_id = previous_id
        self.id = response_item_id("resp")
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.finish: str | None = None
        self._open: _Open | None = None
        self._calls: dict[int, _Open] = {}
        # Every envelope repeats the request's instructions and tools (three envelopes in a stream), and
        # an agent's are tens of KB: written to JSON once.
        self._instructions = orjson.Fragment(orjson.dumps(request.instructions))
        self._tools = orjson.Fragment(orjson.dumps(request.tools_echo()))

    # ------------------------------------------------------------------ the envelope

    def envelope(self, status: str, usage: TokenUsage | None, *, reason: str | None = None) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": reason} if reason else None,
            "instructions": self._instructions,
            "max_output_tokens": r.max_output_tokens,
            "max_tool_calls": r.max_tool_calls,
            "model": r.model,
            "output": list(self.output) if status != "in_progress" else [],
            "parallel_tool_calls": True if r.parallel_tool_calls is None else r.parallel_tool_calls,
            "previous_response_id": self.previous_id,
            "prompt_cache_key": r.prompt_cache_key,
            "reasoning": r.reasoning or {"effort": None, "summary": None},
            "store": r.store is not False,
            "temperature": 1.0 if r.temperature is None else r.temperature,
            "text": r.text or {"format": {"type": "text"}},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": self._tools,
            "top_p": 1.0 if r.top_p is None else r.top_p,
            "truncation": r.truncation or "disabled",
            "usage": response_usage(usage) if usage is not None else None,
            "user": r.user,
            "metadata": r.metadata or {},
        }

    def final(self, usage: TokenUsage) -> dict[str, Any]:
        for opened in self._calls.values():  # arguments that came after the call's item was closed
            assert opened.call is not None
            if opened is not self._open:
                self.output[opened.index] = tool_call_item(opened.call, self.names, item_id=opened.item_id)
        reason = _INCOMPLETE.get(self.finish or "")
        if reason:
            for item in self.output:
                if item["type"] == "message":
                    item["status"] = "incomplete"
        return self.envelope("incomplete" if reason else "completed", usage, reason=reason)

    # ------------------------------------------------------------------ deltas in, events out

    def feed(self, delta: Delta) -> list[Event]:
        events: list[Event] = []
        if delta.index != 0:
            return events
        if delta.reasoning:
            events += self._continue("reasoning", delta.reasoning)
        if delta.text:
            events += self._continue("message", delta.text)
        for piece in delta.tool_calls or ():
            events += self._call_piece(piece)
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason
        return events

    def close(self) -> list[Event]:
        """Ends the item still open; the last events before ``response.completed``.

        An answer with no output at all still has one (empty) message, as OpenAI's do.
        """
        if not self.output:
            return self._start("message") + self._close()
        return self._close()

    def _continue(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open.kind != kind:
            events += self._close()
            events += self._start(kind)
        assert self._open is not None
        self._open.chunks.append(text)
        where = self._where(self._open)
        if kind == "reasoning":
            events.append(
                ("response.reasoning_summary_text.delta", {**where, "summary_index": 0, "delta": text})
            )
        else:
            events.append(
                ("response.output_text.delta", {**where, "content_index": 0, "delta": text, "logprobs": []})
            )
        return events

    def _start(self, kind: str) -> list[Event]:
        index = len(self.output)
        if kind == "reasoning":
            opened = _Open(kind, response_item_id("rs"), index)
            item: dict[str, Any] = {"type": "reasoning", "id": opened.item_id, "summary": []}
            part: Event = (
                "response.reasoning_summary_part.added",
                {**self._where(opened), "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
            )
        else:
            opened = _Open(kind, response_item_id("msg"), index)
            item = {
                "type": "message",
                "id": opened.item_id,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part = (
                "response.content_part.added",
                {**self._where(opened), "content_index": 0, "part": _text_part("")},
            )
        self.output.append(item)
        self._open = opened
        return [("response.output_item.added", {"output_index": index, "item": item}), part]

    def _call_piece(self, piece: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        position = int(piece.get("index", len(self._calls)))
        function = piece.get("function") or {}
        opened = self._calls.get(position)
        if opened is None:
            events += self._close()
            call = {"id": piece.get("id"), "function": {"name": function.get("name") or "", "arguments": ""}}
            opened = _Open("call", response_item_id("fc"), len(self.output), call=call)
            self._calls[position] = opened
            self._open = opened
            item = tool_call_item(call, self.names, item_id=opened.item_id, status="in_progress")
            item["arguments" if item["type"] == "function_call" else "input"] = ""
            self.output.append(item)
            events.append(("response.output_item.added", {"output_index": opened.index, "item": item}))
        assert opened.call is not None
        opened.call["id"] = opened.call["id"] or piece.get("id")
        opened.call["function"]["name"] = opened.call["function"]["name"] or function.get("name") or ""
        arguments = function.get("arguments") or ""
        if arguments:
            opened.call["function"]["arguments"] += arguments
            if self._is_function(opened) and opened is self._open:
                events.append(
                    ("response.function_call_arguments.delta", {**self._where(opened), "delta": arguments})
                )
        return events

    def _is_function(self, opened: _Open) -> bool:
        assert opened.call is not None
        known = self.names.get(opened.call["function"]["name"])
        return known is None or known.kind != "custom"

    def _close(self) -> list[Event]:
        opened, self._open = self._open, None
        if opened is None:
            return []
        where = self._where(opened)
        text = "".join(opened.chunks)
        events: list[Event] = []
        if opened.kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            item: dict[str, Any] = {"type": "reasoning", "id": opened.item_id, "summary": [part]}
            events.append(
                ("response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text})
            )
            events.append(
                ("response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part})
            )
        elif opened.kind == "message":
            item = {
                "type": "message",
                "id": opened.item_id,
                "status": "completed",
                "role": "assistant",
                "content": [_text_part(text)],
            }
            events.append(
                ("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
            )
            events.append(
                ("response.content_part.done", {**where, "content_index": 0, "part": _text_part(text)})
            )
        else:
            assert opened.call is not None
            item = tool_call_item(opened.call, self.names, item_id=opened.item_id)
            if item["type"] == "custom_tool_call":
                value = custom_input(opened.call["function"]["arguments"])
                events.append(("response.custom_tool_call_input.delta", {**where, "delta": value}))
                events.append(("response.custom_tool_call_input.done", {**where, "input": value}))
            else:
                events.append(
                    (
                        "response.function_call_arguments.done",
                        {**where, "name": item["name"], "arguments": item["arguments"]},
                    )
                )
        self.output[opened.index] = item
        events.append(("response.output_item.done", {"output_index": opened.index, "item": item}))
        return events

    @staticmethod
    def _where(opened: _Open) -> dict[str, Any]:
        return {"item_id": opened.item_id, "output_index": opened.index}
