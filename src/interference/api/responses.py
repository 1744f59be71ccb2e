"""POST /v1/responses: the Responses API, served through the chat path of any backend.

The request's input (with the stored history that ``previous_response_id`` names) becomes a chat
completion (``protocol/responses_chat.py``) routed like any other, so tools, tool calls and their
outputs work on the local engine and through every upstream. Hosted tools cannot run there: they are
left out, named in the ``x-interference-dropped-tools`` header and logged. ``truncation: "auto"`` drops
the oldest input (a tool call with its output together) until the prompt fits; ``"disabled"`` answers
a prompt that does not fit with a 400 ``context_length_exceeded`` before any work starts.

Streams are named SSE events with ``sequence_number``: ``response.created``, ``response.in_progress``,
each output item's events (``api/responses_output.py``), then ``response.completed`` (or
``response.incomplete``). A failure after the first byte is one ``error`` event, and the stream ends.
Answers are stored (``store`` is true unless the request says false) for ``GET /v1/responses/{id}``
and for later requests' ``previous_response_id``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from ..errors import ContextLengthExceeded, InterferenceError, InvalidRequest, NotFound, UnsupportedParameter
from ..protocol import ChatCompletionRequest, ParamError, ResponseRequest
from ..protocol.responses import InputItem, parse_items
from ..protocol.responses_chat import ChatPlan, chat_body, group_items
from ..providers.base import Delta, aclose_stream
from ..router import Router
from ..state import ResponseStore
from . import sse
from .errors import error_body, validation_error
from .request_log import RequestRecord
from .responses_output import ResponseBuilder
from .serving import FastJSONResponse, UsageTally, guarded, iter_all, open_stream, settle_usage
from .shutdown import Shutdown

__all__ = ["DROPPED_TOOLS_HEADER", "ResponseServing"]

logger = logging.getLogger(__name__)

DROPPED_TOOLS_HEADER = "x-interference-dropped-tools"


class ResponseServing:
    def __init__(self, router: Router, shutdown: Shutdown, store: ResponseStore | None = None) -> None:
        self._router = router
        self._shutdown = shutdown
        self._store = store

    @property
    def store(self) -> ResponseStore | None:
        return self._store

    async def create(
        self, request: ResponseRequest, *, record: RequestRecord | None = None, owner: str = ""
    ) -> Response:
        refused = request.unsupported
        if refused is not None:
            param, why = refused
            raise UnsupportedParameter(why, param=param)
        items = await self._history(request, owner) + request.items
        plan, first, stream = await self._open(request, items, record)
        headers: dict[str, str] = {}
        if plan.dropped_tools:
            headers[DROPPED_TOOLS_HEADER] = ",".join(plan.dropped_tools)
            logger.info(
                "responses: left out hosted tools this backend cannot run: %s", ", ".join(plan.dropped_tools)
            )
        builder = ResponseBuilder(request, plan.names, previous_id=request.previous_response_id)
        storing = self._store is not None and request.store is not False
        kept = [_item_dict(item) for item in items] if storing else []  # dumped only to be stored
        if not request.stream:
            tally = UsageTally()
            try:
                async for delta in iter_all(first, stream):
                    builder.feed(delta)
                    tally.add(delta.usage)
            finally:
                await aclose_stream(stream)
                if record is not None:
                    record.usage = tally.usage
            builder.close()
            final = builder.final(tally.usage)
            await self._save(request, final, kept, owner)
            return FastJSONResponse(final, headers=headers)
        events = self._events(builder, first, stream, request, (kept, owner), record)
        return sse.EventStream(events, headers=headers)

    async def _history(self, request: ResponseRequest, owner: str) -> list[InputItem]:
        """The items of the stored conversation that ``previous_response_id`` continues."""
        previous = request.previous_response_id
        if not previous:
            return []
        found = None if self._store is None else await self._store.history(previous, owner=owner)
        if found is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        try:
            return parse_items(found)
        except ValidationError:
            raise NotFound(
                f"Previous response with id '{previous}' not found.", param="previous_response_id"
            ) from None

    async def _open(
        self, request: ResponseRequest, items: list[InputItem], record: RequestRecord | None
    ) -> tuple[ChatPlan, Delta | None, AsyncIterator[Delta]]:
        """Route the request and wait for its first delta; with ``truncation: auto``, drop old input
        until it fits (the fewest groups of items, found by bisection)."""
        plan = _plan(request, items)
        try:
            first, stream = await open_stream(self._router.chat(_chat(plan, request)), record)
            return plan, first, stream
        except ContextLengthExceeded:
            if request.truncation != "auto":
                raise
        groups = group_items(items)
        lead = 0
        while lead < len(groups) and _is_instruction(groups[lead]):
            lead += 1  # system and developer messages at the front are kept
        low, high = lead + 1, len(groups) - 1  # drop groups[lead:k] for the smallest k that fits
        best: tuple[ChatPlan, Delta | None, AsyncIterator[Delta]] | None = None
        while low <= high:
            k = (low + high) // 2
            kept = [item for group in groups[:lead] + groups[k:] for item in group]
            candidate = _plan(request, kept)
            try:
                first, stream = await open_stream(self._router.chat(_chat(candidate, request)), record)
            except ContextLengthExceeded:
                low = k + 1
                continue
            if best is not None:
                await aclose_stream(best[2])
            best = (candidate, first, stream)
            high = k - 1
        if best is None:
            raise ContextLengthExceeded(
                "The input does not fit the model's context even with all earlier items dropped.",
                param="input",
            )
        return best

    def _events(
        self,
        builder: ResponseBuilder,
        first: Delta | None,
        stream: AsyncIterator[Delta],
        request: ResponseRequest,
        kept: tuple[list[dict[str, Any]], str],
        record: RequestRecord | None,
    ) -> AsyncIterator[bytes]:
        numbers = itertools.count()

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return sse.encode_event(kind, {"type": kind, "sequence_number": next(numbers), **payload})

        tally = UsageTally()

        async def frames() -> AsyncIterator[bytes]:
            opening = builder.envelope("in_progress", None)
            yield event("response.created", {"response": opening})
            yield event("response.in_progress", {"response": opening})
            async for delta in iter_all(first, stream):
                for kind, payload in builder.feed(delta):
                    yield event(kind, payload)
                tally.add(delta.usage)
            for kind, payload in builder.close():
                yield event(kind, payload)
            final = builder.final(tally.usage)
            await self._save(request, final, *kept)
            done = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
            yield event(done, {"response": final})

        return guarded(
            frames(),
            source=stream,
            shutdown=self._shutdown,
            error_frame=lambda exc: event("error", _error_fields(exc)),
            what="response stream",
            on_close=settle_usage(record, tally),
        )

    async def _save(
        self, request: ResponseRequest, final: dict[str, Any], items: list[dict[str, Any]], owner: str
    ) -> None:
        if self._store is not None and request.store is not False:
            await self._store.save(final, items, owner=owner)


def _plan(request: ResponseRequest, items: list[InputItem]) -> ChatPlan:
    try:
        return chat_body(request, items, stream=bool(request.stream))
    except ParamError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


def _chat(plan: ChatPlan, request: ResponseRequest) -> ChatCompletionRequest:
    try:
        chat = ChatCompletionRequest.model_validate(plan.body)
    except ValidationError as exc:
        error = validation_error(exc)
        raise InvalidRequest(f"The request cannot be served as a chat completion: {error.message}") from None
    chat.set_tenant(request.tenant)
    chat.set_wire_body(plan.body)  # an upstream is sent this object, not a dump of the models
    return chat


def _is_instruction(group: list[InputItem]) -> bool:
    head = group[0]
    return getattr(head, "type", None) == "message" and getattr(head, "role", None) in ("system", "developer")


def _item_dict(item: InputItem) -> dict[str, Any]:
    """An input item as it is stored and listed: message content always as a list of parts."""
    out = item.model_dump(mode="json", exclude_none=True)
    if out.get("type") == "message" and isinstance(out.get("content"), str):
        kind = "output_text" if out.get("role") == "assistant" else "input_text"
        out["content"] = [{"type": kind, "text": out["content"]}]
    return out


def _error_fields(exc: InterferenceError) -> dict[str, Any]:
    body = error_body(exc).error
    return {"code": body.code or body.type, "message": body.message, "param": body.param}
