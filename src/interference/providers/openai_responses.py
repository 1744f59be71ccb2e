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

from ..errors import UpstreamError, UpstreamStatusError
from ..settings import OpenAIDeployment
from .base import MessageEvent
from .http_upstream import UpstreamPool, json_object, read_body
from .upstream import UpstreamProvider

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
        async with self._open(self._post(self._responses_url, {**body, "model": model})) as response:
            if not stream or response.headers.get("content-type", "").startswith("application/json"):
                yield MessageEvent("response", json_object(await read_body(response)))
                return
            async for event in self._iter_typed_events(response, terminal=_TERMINAL, error=_event_error):
                yield event


def _event_error(event: dict[str, Any], redact: Callable[[str], str]) -> UpstreamError:
    """An ``error`` event inside a 200 stream: a server error, retryable before the first byte."""
    message = redact(str(event.get("message") or "The upstream server reported an error."))
    code = event.get("code")
    return UpstreamStatusError(429 if code == "rate_limit_exceeded" else 500, message)
