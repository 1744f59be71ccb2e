"""OpenAI-compatible upstreams that serve ``/v1/responses`` themselves (``responses = true``).

A Responses request goes to them untranslated: the client's JSON body with ``model`` replaced, so
hosted tools, ``include``, encrypted reasoning and every item kind arrive as sent. A streamed answer
is relayed event by event (``MessageEvent``, named by its ``type``); a whole one is one event named
``response``. Failures map to the same ``Upstream*`` errors as chat (connection, timeout, status,
malformed or unfinished stream), so failover and cooldown work alike. Chat and completions go
through the parent class unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson

from ..errors import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from ..settings import OpenAIDeployment
from .base import MessageEvent
from .sse import SSEDecoder
from .upstream import UpstreamPool, UpstreamProvider, _loads

__all__ = ["ResponsesUpstreamProvider"]

# The events that end a Responses stream; one of them must come before the stream closes.
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesUpstreamProvider(UpstreamProvider):
    def __init__(self, deployment: OpenAIDeployment, *, pool: UpstreamPool) -> None:
        super().__init__(deployment, pool=pool)
        self._responses_url = httpx.URL(f"{deployment.base_url}/responses")

    @property
    def serves_responses(self) -> bool:
        return True

    async def responses(
        self, body: dict[str, Any], *, model: str, stream: bool
    ) -> AsyncIterator[MessageEvent]:
        if self._client is None:
            raise RuntimeError(f"upstream {self.name} used before start()")
        upstream_request = httpx.Request(
            "POST",
            self._responses_url,
            content=orjson.dumps({**body, "model": model}),
            headers=self._headers,
            extensions=self._extensions,
        )
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                if not stream or response.headers.get("content-type", "").startswith("application/json"):
                    whole = _loads(await response.aread())
                    if not isinstance(whole, dict):
                        raise UpstreamProtocolError("The upstream server sent a malformed response.")
                    yield MessageEvent("response", whole)
                    return
                decoder = SSEDecoder()
                finished = False
                async for chunk in response.aiter_bytes():
                    for data in decoder.decode(chunk):
                        event = self._event(data)
                        finished = finished or event.name in _TERMINAL
                        yield event
                for data in decoder.flush():
                    event = self._event(data)
                    finished = finished or event.name in _TERMINAL
                    yield event
                if not finished:
                    raise UpstreamProtocolError("The upstream server ended the stream before it finished.")
            finally:
                await response.aclose()

    def _event(self, data: str) -> MessageEvent:
        event = _loads(data)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise UpstreamProtocolError("The upstream server sent a malformed event.")
        if event["type"] == "error":
            raise _event_error(event, self._redact)
        return MessageEvent(event["type"], event)


def _event_error(event: dict[str, Any], redact: Callable[[str], str]) -> UpstreamError:
    """An ``error`` event inside a 200 stream: a server error, retryable before the first byte."""
    message = redact(str(event.get("message") or "The upstream server reported an error."))
    code = event.get("code")
    if code == "rate_limit_exceeded":
        exc = UpstreamStatusError(429, message)
        exc.type = "rate_limit_error"
        return exc
    return UpstreamStatusError(500, message)
