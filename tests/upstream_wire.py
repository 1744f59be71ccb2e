"""What a fake upstream says, written in OpenAI's or Anthropic's wire format (bodies, chunks, events).

Pure functions of a ``Reply``: ``upstream_server.py`` picks the reply and the faults, these write it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

PROMPT_TOKENS, CACHED_TOKENS = 11, 4
TOOL_NAME = "get_weather"
TOOL_PIECES = ('{"city": ', '"Paris"}')
CALL_ID, TOOL_USE_ID = "call_1", "toolu_fake1"
SIGNATURE = "sig-fake-0123"
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    403: "permission_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Reply:
    """What the model says: reasoning, then text pieces or one tool call (its arguments in pieces)."""

    pieces: tuple[str, ...] = ()
    thoughts: tuple[str, ...] = ()
    tool: str | None = None
    tool_pieces: tuple[str, ...] = ()

    @property
    def arguments(self) -> str:
        return "".join(self.tool_pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


# ---------------------------------------------------------------------- OpenAI


def openai_usage(completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = "fake_code",
    headers: dict[str, str] | None = None,
) -> Response:
    error = {
        "message": message,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


def chat_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    if reply.tool is not None:
        call = {
            "id": CALL_ID,
            "type": "function",
            "function": {"name": reply.tool, "arguments": reply.arguments},
        }
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": reply.text}, "stop"
        if reply.thoughts:
            message["reasoning_content"] = "".join(reply.thoughts)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [_logprob(p) for p in reply.pieces]}
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [choice],
        "usage": openai_usage(len(reply.pieces)),
    }


def completion_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": "stop"}
    if body.get("logprobs"):
        choice["logprobs"] = {"tokens": list(reply.pieces), "token_logprobs": [-0.5] * len(reply.pieces)}
    return {
        "id": "cmpl-up",
        "object": "text_completion",
        "created": 1,
        "model": body["model"],
        "choices": [choice],
        "usage": openai_usage(len(reply.pieces)),
    }


def chat_chunks(
    reply: Reply, body: dict[str, Any], *, is_chat: bool, with_usage: bool
) -> list[dict[str, Any]]:
    """A streamed answer's chunks, without ``[DONE]``; ``reply.pieces`` may be cut short already."""
    base = {"id": "up-1", "created": 1, "model": body["model"], "system_fingerprint": "fp_up"}
    kind = "chat.completion.chunk" if is_chat else "text_completion"
    wants_logprobs = bool(body.get("logprobs"))

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {**base, "object": kind, "choices": [choice]}

    def chat(delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        return chunk({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish})

    chunks: list[dict[str, Any]] = []
    if not is_chat:
        for piece in reply.pieces:
            lp = {"tokens": [piece], "token_logprobs": [-0.5]} if wants_logprobs else None
            chunks.append(chunk({"index": 0, "text": piece, "logprobs": lp, "finish_reason": None}))
        chunks.append(chunk({"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}))
    elif reply.tool is not None:
        chunks.append(chat({"role": "assistant", "content": ""}))
        call = {
            "index": 0,
            "id": CALL_ID,
            "type": "function",
            "function": {"name": reply.tool, "arguments": ""},
        }
        chunks.append(chat({"tool_calls": [call]}))
        for part in reply.tool_pieces:
            chunks.append(chat({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        chunks.append(chat({}, "tool_calls"))
    else:
        chunks.append(chat({"role": "assistant", "content": ""}))
        chunks.extend(chat({"reasoning_content": piece}) for piece in reply.thoughts)
        for piece in reply.pieces:
            chunks.append(
                chat({"content": piece}, lp={"content": [_logprob(piece)]} if wants_logprobs else None)
            )
        chunks.append(chat({}, "stop"))
    if with_usage:
        chunks.append({**base, "object": kind, "choices": [], "usage": openai_usage(len(reply.pieces))})
    return chunks


def response_events(
    reply: Reply, body: dict[str, Any], number: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Responses answer: the whole response, and the events that stream it."""
    message = {
        "type": "message", "id": "msg_up", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
    }  # fmt: skip
    count = len(reply.pieces)
    whole = {
        "id": f"resp_up{number}", "object": "response", "created_at": 1, "status": "completed",
        "model": body["model"], "output": [message], "store": body.get("store", True),
        "usage": {
            "input_tokens": PROMPT_TOKENS, "output_tokens": count, "total_tokens": PROMPT_TOKENS + count,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }  # fmt: skip
    opening = {**whole, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": opening},
        *({"type": "response.output_text.delta", "item_id": "msg_up", "output_index": 0,
           "content_index": 0, "delta": piece} for piece in reply.pieces),
        {"type": "response.completed", "response": whole},
    ]  # fmt: skip
    return whole, [{**e, "sequence_number": i} for i, e in enumerate(events)]


# ---------------------------------------------------------------------- Anthropic


def anthropic_error(status: int) -> Response:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": f"fake anthropic says {status}"}}
    return JSONResponse(body, status_code=status)


def message(reply: Reply, body: dict[str, Any], *, final: bool) -> dict[str, Any]:
    """A whole message (``final``), or the one that opens a stream."""
    content: list[dict[str, Any]] = []
    if final and reply.tool is not None:
        tool_use = {
            "type": "tool_use",
            "id": TOOL_USE_ID,
            "name": reply.tool,
            "input": json.loads(reply.arguments),
        }
        content = [tool_use]
    elif final:
        if reply.thoughts:
            content.append({"type": "thinking", "thinking": "".join(reply.thoughts), "signature": SIGNATURE})
        content.append({"type": "text", "text": reply.text})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": _stop_reason(reply) if final else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": PROMPT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHED_TOKENS,
            "output_tokens": len(reply.pieces) if final else 1,
        },
    }


def message_events(reply: Reply, body: dict[str, Any], *, is_torn: bool = False) -> list[bytes]:
    """A streamed message; ``is_torn``: two text pieces, then nothing (no message_stop)."""

    def event(kind: str, **payload: Any) -> bytes:
        return sse({"type": kind, **payload}, kind)

    events = [event("message_start", message=message(reply, body, final=False)), event("ping")]
    at = 0  # the index of the last content block
    if reply.tool is not None:
        block = {"type": "tool_use", "id": TOOL_USE_ID, "name": reply.tool, "input": {}}
        events.append(event("content_block_start", index=0, content_block=block))
        for part in reply.tool_pieces:
            delta = {"type": "input_json_delta", "partial_json": part}
            events.append(event("content_block_delta", index=0, delta=delta))
    else:
        if reply.thoughts:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            events.append(event("content_block_start", index=0, content_block=block))
            for thought in reply.thoughts:
                events.append(
                    event(
                        "content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": thought}
                    )
                )
            events.append(
                event(
                    "content_block_delta", index=0, delta={"type": "signature_delta", "signature": SIGNATURE}
                )
            )
            events.append(event("content_block_stop", index=0))
            at = 1
        events.append(event("content_block_start", index=at, content_block={"type": "text", "text": ""}))
        for piece in reply.pieces[:2] if is_torn else reply.pieces:
            events.append(event("content_block_delta", index=at, delta={"type": "text_delta", "text": piece}))
        if is_torn:
            return events
    events.append(event("content_block_stop", index=at))
    stop = {"stop_reason": _stop_reason(reply), "stop_sequence": None}
    events.append(event("message_delta", delta=stop, usage={"output_tokens": len(reply.pieces)}))
    events.append(event("message_stop"))
    return events


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool is not None else "end_turn"
