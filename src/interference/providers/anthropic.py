"""Upstreams that speak Anthropic's Messages API (``type = "anthropic"`` deployments).

``/v1/messages`` and ``count_tokens`` go through natively: the client's body as sent (``model``
replaced) and the upstream's events relayed one by one as ``MessageEvent``s. OpenAI chat clients are
served by translation (``protocol.anthropic_openai``): the chat request becomes a Messages body, and
the answer, whole or streamed, becomes chat deltas. Failures map to the same ``Upstream*`` errors as
OpenAI-compatible upstreams (connection, timeout, status, malformed stream), so failover and
cooldown work alike; an ``error`` event inside a 200 stream maps by its type (``overloaded_error``
is a 529, ``api_error`` a 500, both retryable before the first byte).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ..errors import UnsupportedParameter, UpstreamError, UpstreamProtocolError, UpstreamStatusError
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    MessagesRequest,
    ParamError,
)
from ..protocol.anthropic_openai import EventTranslator, chat_choice, chat_usage, messages_body
from ..settings import AnthropicDeployment, UpstreamDeployment
from .base import Delta, MessageEvent
from .http_upstream import Call, HttpUpstream, UpstreamPool
from .openai_wire import choice_delta, usage_of

__all__ = ["AnthropicProvider"]

# Anthropic's error types inside a 200 stream, as the statuses they would have had.
_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_TERMINAL = frozenset({"message_stop"})


class AnthropicProvider(HttpUpstream):
    """One Anthropic-compatible endpoint; ``base_url`` is its root as in ``ANTHROPIC_BASE_URL``."""

    def __init__(self, deployment: AnthropicDeployment, *, pool: UpstreamPool) -> None:
        super().__init__(deployment, pool=pool)
        root = deployment.base_url.removesuffix("/v1")
        self._urls = {
            "messages": httpx.URL(f"{root}/v1/messages"),
            "count_tokens": httpx.URL(f"{root}/v1/messages/count_tokens"),
        }

    def _wire_headers(self, deployment: UpstreamDeployment) -> dict[str, str]:
        assert isinstance(deployment, AnthropicDeployment)
        headers = {"anthropic-version": deployment.anthropic_version}
        if self._secret:
            headers["x-api-key"] = self._secret
        return headers

    # ------------------------------------------------------------------ OpenAI clients, by translation

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        try:
            body = messages_body(request, model=model)
        except ParamError as exc:
            raise UnsupportedParameter(str(exc), param=exc.param) from None
        translator = EventTranslator()
        async for item in self._exchange(body, bool(request.stream)):
            if isinstance(item, MessageEvent):
                for delta in _translated(translator, item):
                    yield delta
            else:
                for delta in _translated_whole(item):
                    yield delta

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        raise UnsupportedParameter(
            f"The model '{request.model}' serves chat only: its upstream speaks Anthropic's Messages API.",
            param="model",
        )
        yield Delta()  # pragma: no cover - makes this an async generator

    # ------------------------------------------------------------------ Anthropic clients, natively

    async def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[MessageEvent]:
        body = request.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = model
        async for item in self._exchange(body, bool(request.stream), beta=request.beta):
            yield item if isinstance(item, MessageEvent) else MessageEvent("message", item)

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        body = request.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = model
        result = await self._read_object(self._call("count_tokens", body, request.beta))
        count = result.get("input_tokens")
        if not isinstance(count, int):
            raise UpstreamProtocolError("The upstream server sent a malformed token count.")
        return count

    # ------------------------------------------------------------------ the call

    def _call(self, kind: str, body: dict[str, Any], beta: str) -> Call:
        """``beta``: the client's ``anthropic-beta`` header, passed on as sent."""
        headers = {**self._headers, "anthropic-beta": beta} if beta else None
        return self._post(self._urls[kind], body, headers=headers)

    async def _exchange(
        self, body: dict[str, Any], is_streaming: bool, *, beta: str = ""
    ) -> AsyncIterator[MessageEvent | dict[str, Any]]:
        """One Messages call: its events as they come (checked), or its whole body."""
        if not is_streaming:
            yield await self._read_object(self._call("messages", body, beta))
            return
        async with self._open(self._call("messages", body, beta)) as response:
            events = self._iter_typed_events(response, terminal=_TERMINAL, error=_event_error)
            async for event in events:
                yield event


def _translated(translator: EventTranslator, event: MessageEvent) -> list[Delta]:
    """One upstream event as chat deltas; usage goes out when the message stops."""
    deltas = []
    for choice in translator.feed(event.data):
        delta = choice_delta(choice, "chat", is_chunk=True)
        if delta.text or delta.reasoning or delta.tool_calls or delta.finish_reason:
            deltas.append(delta)
    if event.name == "message_stop" and translator.usage is not None:
        deltas.append(Delta(usage=usage_of(translator.usage)))
    return deltas


def _translated_whole(body: dict[str, Any]) -> list[Delta]:
    deltas = [choice_delta(chat_choice(body), "chat", is_chunk=False)]
    usage = usage_of(chat_usage(body.get("usage")))
    if usage is not None:
        deltas.append(Delta(usage=usage))
    return deltas


def _event_error(event: dict[str, Any], redact: Callable[[str], str]) -> UpstreamError:
    """An ``error`` event inside a 200 stream, as the status its type would have had."""
    error = event.get("error")
    obj = error if isinstance(error, dict) else {}
    message = redact(str(obj.get("message") or "The upstream server reported an error."))
    status = _EVENT_STATUS.get(str(obj.get("type")), 500)
    return UpstreamStatusError(status, message)
