"""OpenAI's chat and completions answers, whole bodies and stream chunks, read into ``Delta``s.

Pure parsing, no HTTP: ``upstream.py`` feeds it what an OpenAI-compatible upstream sends, and the
Anthropic provider feeds it the chat choices it translated Messages answers into. Anything malformed
is an ``UpstreamProtocolError``; an error event inside a 200 stream becomes the error it names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ..errors import UpstreamAuthError, UpstreamError, UpstreamProtocolError, UpstreamStatusError
from .base import Delta, TokenUsage
from .http_upstream import loads, nonempty_str

__all__ = ["ChunkStream", "Kind", "choice_delta", "usage_of", "whole_deltas"]

Kind = Literal["chat", "text"]


class ChunkStream:
    """Upstream SSE payloads to deltas; notices a stream that ends before it finished."""

    __slots__ = ("_done", "_finished", "_kind", "_redact", "_seen", "_usage")

    def __init__(self, kind: Kind, *, redact: Callable[[str], str]) -> None:
        self._kind: Kind = kind
        self._redact = redact
        self._done = False
        self._seen: set[int] = set()
        self._finished: set[int] = set()
        self._usage: TokenUsage | None = None

    def feed(self, data: str) -> list[Delta]:
        if self._done:
            return []  # nothing counts after [DONE]; the body is still drained so the connection is reused
        if data == "[DONE]":
            self._done = True
            return []
        chunk = loads(data)
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed event.")
        if chunk.get("error") and not chunk.get("choices"):
            raise _event_error(chunk["error"], self._redact)
        # Usage may come on every chunk (cumulative, vLLM's continuous_usage_stats) or once at the
        # end; the last one seen is the total, sent once when the stream ends.
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        deltas = []
        for choice in _list(chunk.get("choices")):
            delta = choice_delta(choice, self._kind, is_chunk=True)
            self._seen.add(delta.index)
            if delta.finish_reason is not None:
                self._finished.add(delta.index)
            if delta.text or delta.reasoning or delta.tool_calls or delta.logprobs or delta.finish_reason:
                deltas.append(delta)
        return deltas

    def end(self) -> list[Delta]:
        if not self._done and (not self._seen or self._seen - self._finished):
            raise UpstreamProtocolError("The upstream server ended the stream before it finished.")
        return [Delta(usage=self._usage)] if self._usage is not None else []


def whole_deltas(body: dict[str, Any], kind: Kind) -> list[Delta]:
    deltas = [choice_delta(choice, kind, is_chunk=False) for choice in _list(body.get("choices"))]
    usage = usage_of(body.get("usage"))
    if usage is not None:
        deltas.append(Delta(usage=usage))
    return deltas


def choice_delta(choice: Any, kind: Kind, *, is_chunk: bool) -> Delta:
    if not isinstance(choice, dict):
        raise UpstreamProtocolError("The upstream server sent a malformed choice.")
    index = choice.get("index", 0)
    if not isinstance(index, int):
        raise UpstreamProtocolError("The upstream server sent a malformed choice index.")
    tool_calls: tuple[dict[str, Any], ...] | None = None
    reasoning: Any = None
    if kind == "text":
        text = choice.get("text")
    else:
        message = choice.get("delta" if is_chunk else "message") or {}
        if not isinstance(message, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed message.")
        text = message.get("content")
        # vLLM, SGLang, DeepSeek and llama-server say reasoning_content; Ollama and OpenRouter, reasoning.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        calls = message.get("tool_calls")
        if calls:
            # Whole messages carry no per-call index; streamed ones do. Deltas always carry it.
            tool_calls = tuple(
                call if is_chunk else {"index": i, **call}
                for i, call in enumerate(_list(calls))
                if isinstance(call, dict)
            )
    if text is not None and not isinstance(text, str):
        raise UpstreamProtocolError("The upstream server sent malformed content.")
    logprobs = choice.get("logprobs")
    finish = choice.get("finish_reason")
    return Delta(
        text=text or "",
        index=index,
        finish_reason=finish if isinstance(finish, str) else None,
        tool_calls=tool_calls or None,
        logprobs=logprobs if isinstance(logprobs, dict) and logprobs else None,
        reasoning=reasoning if isinstance(reasoning, str) else "",
    )


def usage_of(obj: Any) -> TokenUsage | None:
    if not isinstance(obj, dict):
        return None
    details = obj.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return TokenUsage(_int(obj.get("prompt_tokens")), _int(obj.get("completion_tokens")), _int(cached))


def _event_error(error: Any, redact: Callable[[str], str]) -> UpstreamError:
    """An error event inside a 200 stream (vLLM sends these); a 4xx code there is the request's fault."""
    obj = error if isinstance(error, dict) else {"message": str(error)}
    message = redact(nonempty_str(obj.get("message")) or "The upstream server reported an error.")
    code = obj.get("code")
    if code in (401, 403):
        return UpstreamAuthError(code, message)
    if isinstance(code, int) and 400 <= code < 500 and code != 429:
        return UpstreamStatusError(code, message)
    return UpstreamError(message)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UpstreamProtocolError("The upstream server sent a malformed response.")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
