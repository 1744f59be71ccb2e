"""POST /v1/responses: the Responses API for text, served through the chat path.

The request becomes a chat completion (``instructions`` as the system message, input items as
messages) routed like any other, so it works on the local engine and through upstreams alike. The
answer is one assistant message with one ``output_text`` part. Streams use named SSE events in
OpenAI's order: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut it short). A failure after the first byte is
one ``error`` event, and the stream ends.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import InterferenceError, UnsupportedParameter
from ..protocol import ChatCompletionRequest, ResponseRequest, response_item_id
from ..providers.base import Delta, TokenUsage
from ..router import Router
from . import sse
from .errors import error_body
from .request_log import RequestRecord
from .serving import UsageTally, fold, guarded, iter_all, open_stream, settle_usage
from .shutdown import Shutdown

__all__ = ["ResponseServing"]


# Chat finish reasons that leave a response incomplete, and the reason OpenAI gives for each.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseServing:
    def __init__(self, router: Router, shutdown: Shutdown) -> None:
        self._router = router
        self._shutdown = shutdown

    async def create(self, request: ResponseRequest, *, record: RequestRecord | None = None) -> Response:
        refused = request.unsupported
        if refused is not None:
            param, why = refused
            raise UnsupportedParameter(why, param=param)
        first, stream = await open_stream(self._router.chat(_chat_request(request)), record)
        draft = _Draft(request)
        if not request.stream:
            folded = await fold(first, stream, record)
            return JSONResponse(draft.final(folded.text(0), folded.finish.get(0), folded.usage))
        events = draft.events(first, stream, self._shutdown, record)
        return StreamingResponse(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


def _chat_request(request: ResponseRequest) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        messages.extend({"role": item.role, "content": item.text} for item in request.input)
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": bool(request.stream)}
    if request.stream:
        body["stream_options"] = {"include_usage": True}  # upstreams send usage only when asked
    optional = {
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    chat = ChatCompletionRequest.model_validate(body)
    chat.set_tenant(request.tenant)
    return chat


class _Draft:
    """One response being built: its ids, the request fields it echoes, and its final form."""

    def __init__(self, request: ResponseRequest) -> None:
        self.request = request
        self.id = response_item_id("resp")
        self.message_id = response_item_id("msg")
        self.created_at = int(time.time())

    def envelope(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: TokenUsage | None,
        *,
        reason: str | None = None,
    ) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": reason} if reason else None,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": r.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,  # nothing is kept, whatever the request said
            "temperature": 1.0 if r.temperature is None else r.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0 if r.top_p is None else r.top_p,
            "truncation": r.truncation or "disabled",
            "usage": _usage(usage) if usage is not None else None,
            "user": r.user,
            "metadata": r.metadata or {},
        }

    def message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def final(self, text: str, finish: str | None, usage: TokenUsage) -> dict[str, Any]:
        reason = _INCOMPLETE.get(finish or "")
        status = "incomplete" if reason else "completed"
        return self.envelope(status, [self.message(status, [_text_part(text)])], usage, reason=reason)

    def events(
        self,
        first: Delta | None,
        stream: AsyncIterator[Delta],
        shutdown: Shutdown,
        record: RequestRecord | None = None,
    ) -> AsyncIterator[bytes]:
        numbers = itertools.count()

        def event(kind: str, **payload: Any) -> bytes:
            return sse.encode_event(kind, {"type": kind, "sequence_number": next(numbers), **payload})

        tally = UsageTally()
        return guarded(
            self._events(first, stream, event, tally),
            source=stream,
            shutdown=shutdown,
            error_frame=lambda exc: event("error", **_error_fields(exc)),
            what="response stream",
            on_close=settle_usage(record, tally),
        )

    async def _events(
        self,
        first: Delta | None,
        stream: AsyncIterator[Delta],
        event: Callable[..., bytes],
        tally: UsageTally,
    ) -> AsyncIterator[bytes]:
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        texts: list[str] = []
        finish: str | None = None
        opening = self.envelope("in_progress", [], None)
        yield event("response.created", response=opening)
        yield event("response.in_progress", response=opening)
        yield event("response.output_item.added", output_index=0, item=self.message("in_progress", []))
        yield event("response.content_part.added", **where, part=_text_part(""))
        async for delta in iter_all(first, stream):
            if delta.index != 0:
                continue
            if delta.text:
                texts.append(delta.text)
                yield event("response.output_text.delta", **where, delta=delta.text, logprobs=[])
            if delta.finish_reason is not None:
                finish = delta.finish_reason
            tally.add(delta.usage)
        text = "".join(texts)
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=_text_part(text))
        final = self.final(text, finish, tally.usage)
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
        done = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(done, response=final)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _error_fields(exc: InterferenceError) -> dict[str, Any]:
    body = error_body(exc).error
    return {"code": body.code or body.type, "message": body.message, "param": body.param}
