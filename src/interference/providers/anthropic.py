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
import orjson

from .. import __version__
from ..errors import UnsupportedParameter, UpstreamError, UpstreamProtocolError, UpstreamStatusError
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    MessagesRequest,
    ParamError,
)
from ..protocol.anthropic_openai import EventTranslator, chat_choice, chat_usage, messages_body
from ..settings import AnthropicDeployment
from .base import Delta, MessageEvent
from .sse import SSEDecoder
from .upstream import UpstreamPool, UpstreamProvider, _choice_delta, _loads, _usage

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


class AnthropicProvider(UpstreamProvider):
    """One Anthropic-compatible endpoint; ``base_url`` is its root as in ``ANTHROPIC_BASE_URL``."""

    def __init__(self, deployment: AnthropicDeployment, *, pool: UpstreamPool) -> None:
        super().__init__(deployment, pool=pool)
        root = deployment.base_url.removesuffix("/v1")
        self._urls = {
            "messages": httpx.URL(f"{root}/v1/messages"),
            "count_tokens": httpx.URL(f"{root}/v1/messages/count_tokens"),
        }
        self._headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": f"interference/{__version__}",
            "anthropic-version": deployment.anthropic_version,
        }
        if self._secret:
            self._headers["x-api-key"] = self._secret

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
        result = await self._whole(self._urls["count_tokens"], body, beta=request.beta)
        count = result.get("input_tokens")
        if not isinstance(count, int):
            raise UpstreamProtocolError("The upstream server sent a malformed token count.")
        return count

    # ------------------------------------------------------------------ the call

    def _post(self, url: httpx.URL, body: dict[str, Any], beta: str = "") -> httpx.Request:
        """The upstream call; ``beta``: the client's ``anthropic-beta`` header, passed on as sent."""
        if self._client is None:
            raise RuntimeError(f"upstream {self.name} used before start()")
        headers = {**self._headers, "anthropic-beta": beta} if beta else self._headers
        return httpx.Request(
            "POST", url, content=orjson.dumps(body), headers=headers, extensions=self._extensions
        )

    async def _whole(self, url: httpx.URL, body: dict[str, Any], *, beta: str = "") -> dict[str, Any]:
        upstream_request = self._post(url, body, beta)
        assert self._client is not None
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                result = _loads(await response.aread())
            finally:
                await response.aclose()
        if not isinstance(result, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed response.")
        return result

    async def _exchange(
        self, body: dict[str, Any], is_streaming: bool, *, beta: str = ""
    ) -> AsyncIterator[MessageEvent | dict[str, Any]]:
        """One Messages call: its events as they come (checked), or its whole body."""
        if not is_streaming:
            yield await self._whole(self._urls["messages"], body, beta=beta)
            return
        upstream_request = self._post(self._urls["messages"], body, beta)
        assert self._client is not None
        with self._translate_errors():
            response = await self._client.send(upstream_request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                decoder = SSEDecoder()
                stopped = False
                async for chunk in response.aiter_bytes():
                    for data in decoder.decode(chunk):
                        event = self._event(data)
                        stopped = stopped or event.name == "message_stop"
                        yield event
                for data in decoder.flush():
                    event = self._event(data)
                    stopped = stopped or event.name == "message_stop"
                    yield event
                if not stopped:
                    raise UpstreamProtocolError("The upstream server ended the stream before it finished.")
            finally:
                await response.aclose()

    def _event(self, data: str) -> MessageEvent:
        event = _loads(data)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise UpstreamProtocolError("The upstream server sent a malformed event.")
        if event["type"] == "error":
            raise _event_error(event.get("error"), self._redact)
        return MessageEvent(event["type"], event)


def _translated(translator: EventTranslator, event: MessageEvent) -> list[Delta]:
    """One upstream event as chat deltas; usage goes out when the message stops."""
    deltas = []
    for choice in translator.feed(event.data):
        delta = _choice_delta(choice, "chat", is_chunk=True)
        if delta.text or delta.reasoning or delta.tool_calls or delta.finish_reason:
            deltas.append(delta)
    if event.name == "message_stop" and translator.usage is not None:
        deltas.append(Delta(usage=_usage(translator.usage)))
    return deltas


def _translated_whole(body: dict[str, Any]) -> list[Delta]:
    deltas = [_choice_delta(chat_choice(body), "chat", is_chunk=False)]
    usage = _usage(chat_usage(body.get("usage")))
    if usage is not None:
        deltas.append(Delta(usage=usage))
    return deltas


def _event_error(error: Any, redact: Callable[[str], str]) -> UpstreamError:
    obj = error if isinstance(error, dict) else {}
    message = redact(str(obj.get("message") or "The upstream server reported an error."))
    status = _EVENT_STATUS.get(str(obj.get("type")), 500)
    exc = UpstreamStatusError(status, message)
    if status == 429:
        exc.type = "rate_limit_error"
    return exc
