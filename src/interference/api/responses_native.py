"""POST /v1/responses through a deployment that serves it itself: forwarded untranslated.

The client's JSON body goes to the upstream as sent (``model`` replaced), so hosted tools,
``include`` and encrypted reasoning arrive untouched; the answer, whole or streamed, comes back as
the upstream wrote it, with ``model`` set to the name the client asked for. A ``previous_response_id``
that we hold is expanded here (``expand_raw``); a finished response is stored like a translated one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import InterferenceError, UpstreamProtocolError
from ..protocol import ResponseRequest
from ..providers.base import TokenUsage, aclose_stream
from ..router import Router
from ..state import ResponseStore
from . import sse
from .errors import error_body
from .request_log import RequestRecord
from .serving import FastJSONResponse, guarded, iter_all, open_stream
from .shutdown import Shutdown

__all__ = ["NativeResponseServing"]

# Item kinds whose ``id`` an upstream needs back.
_KEEP_ID = frozenset({"reasoning", "item_reference"})
# Events whose ``response`` is the finished response, to be stored.
_FINISHED = frozenset({"response.completed", "response.incomplete"})


class NativeResponseServing:
    def __init__(self, router: Router, shutdown: Shutdown, store: ResponseStore | None) -> None:
        self._router = router
        self._shutdown = shutdown
        self._store = store

    async def create(
        self, request: ResponseRequest, raw: bytes, *, record: RequestRecord | None = None, owner: str = ""
    ) -> Response:
        body: dict[str, Any] = orjson.loads(raw)  # parsed as a ResponseRequest already: an object
        items = await self._expand(body, owner)
        stream = bool(request.stream)
        first, events = await open_stream(self._router.responses(request.model, body, stream=stream), record)
        if first is None:
            raise UpstreamProtocolError("The upstream server sent no response.")
        keep = request.store is not False and self._store is not None
        if not stream or first.name == "response":
            await aclose_stream(events)
            final = {**first.data, "model": request.model}
            _settle(record, final)
            if keep and final.get("status") in ("completed", "incomplete"):
                await self._save(final, items, owner)
            return FastJSONResponse(final)

        async def frames() -> AsyncIterator[bytes]:
            async for event in iter_all(first, events):
                data = event.data
                response = data.get("response")
                if isinstance(response, dict):
                    response = {**response, "model": request.model}
                    data = {**data, "response": response}
                    if event.name in _FINISHED:
                        _settle(record, response)
                        if keep:
                            await self._save(response, items, owner)
                yield sse.encode_event(event.name, data)

        relay = guarded(
            frames(), source=events, shutdown=self._shutdown, error_frame=_error_event, what="response stream"
        )
        return sse.EventStream(relay)

    async def _save(self, response: dict[str, Any], items: list[dict[str, Any]], owner: str) -> None:
        if self._store is not None:
            await self._store.save(response, items, owner=owner)

    async def _expand(self, body: dict[str, Any], owner: str) -> list[dict[str, Any]]:
        """The whole input of the request, as it will be stored; a ``previous_response_id`` that we hold is
        expanded into ``body["input"]`` (and dropped), one we do not hold goes to the upstream as it is."""
        value = body.get("input")
        own: list[dict[str, Any]]
        if isinstance(value, str):
            own = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
        else:
            own = [dict(item) for item in value if isinstance(item, dict)] if isinstance(value, list) else []
        previous = body.get("previous_response_id")
        if not isinstance(previous, str) or not previous or self._store is None:
            return own
        chain = await self._store.history(previous, owner=owner)
        if chain is None:
            return own
        # Our item ids mean nothing upstream; reasoning items and references keep theirs.
        forwarded = [
            {key: v for key, v in item.items() if key != "id" or item.get("type") in _KEEP_ID}
            for item in chain
        ]
        sent = [{"role": "user", "content": value}] if isinstance(value, str) else list(value or [])
        body["input"] = [*forwarded, *sent]
        del body["previous_response_id"]
        return [*chain, *own]


def _settle(record: RequestRecord | None, response: dict[str, Any]) -> None:
    """The access log and the key's token count take the upstream's usage."""
    usage = response.get("usage")
    if record is None or not isinstance(usage, dict):
        return
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    record.usage = TokenUsage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")), _int(cached))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_event(exc: InterferenceError) -> bytes:
    error = error_body(exc).error
    code = error.code or error.type
    return sse.encode_event(
        "error", {"type": "error", "code": code, "message": error.message, "param": error.param}
    )
