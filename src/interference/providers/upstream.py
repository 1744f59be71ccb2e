"""Upstream OpenAI-compatible deployments (vLLM, SGLang, Ollama, llama-server, OpenAI) over HTTP.

The connection pool, timeouts, error mapping and failover signals are ``http_upstream.py``'s; this
module keeps OpenAI's wire format: its URLs, its bearer key, its bodies (``openai_wire.py`` reads
them into deltas).

A streamed request is forwarded as a stream and each upstream event becomes deltas as it arrives. A
non-streamed request is forwarded non-streamed and its JSON body becomes one delta per choice: the
upstream then applies its own non-stream semantics (usage always present, no ``stream_options``
needed, which older servers reject), and we parse one body instead of one event per token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from ..errors import InvalidRequest, UpstreamAuthError, UpstreamStatusError
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    SamplingFields,
    WireModel,
)
from ..settings import UpstreamDeployment
from .base import Delta, Embeddings, chat_body_from_messages, chat_from_messages
from .http_upstream import Call, HttpUpstream, UpstreamPool, json_object, loads, read_body
from .openai_wire import ChunkStream, Kind, whole_deltas
from .upstream_embeddings import embeddings_from_body

__all__ = ["UpstreamPool", "UpstreamProvider"]


class UpstreamProvider(HttpUpstream):
    """One OpenAI-compatible endpoint; requests are forwarded with the model name replaced."""

    def __init__(self, deployment: UpstreamDeployment, *, pool: UpstreamPool) -> None:
        super().__init__(deployment, pool=pool)
        # Parsed once: httpx would parse a string URL again on every request.
        self._urls = {
            "chat": httpx.URL(f"{deployment.base_url}/chat/completions"),
            "text": httpx.URL(f"{deployment.base_url}/completions"),
            "embeddings": httpx.URL(f"{deployment.base_url}/embeddings"),
            # vLLM and SGLang serve /tokenize at the root, beside /v1.
            "tokenize": httpx.URL(f"{deployment.base_url.removesuffix('/v1')}/tokenize"),
        }

    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._iter_deltas(request, model, "chat")

    def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[Delta]:
        body = chat_body_from_messages(request)
        body["model"] = model
        return self._iter_call(self._post(self._urls["chat"], body), "chat", stream=bool(request.stream))

    def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._iter_deltas(request, model, "text")

    async def embed(self, request: EmbeddingRequest, *, model: str) -> Embeddings:
        """Forward the request as the client sent it (model replaced); base64 answers are decoded too."""
        raw = await self._read(self._request("embeddings", request, model))
        return embeddings_from_body(loads(raw), expected=len(request.inputs))

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        """The prompt's size from the upstream's ``/tokenize`` (vLLM, SGLang): its own chat template."""
        chat = chat_from_messages(request)
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump(exclude_unset=True) for m in chat.messages],
            "add_generation_prompt": True,
        }
        if chat.tools:
            body["tools"] = [t.model_dump(exclude_unset=True) for t in chat.tools]
        # A missing or different /tokenize (llama-server's takes "content") is no fault of the upstream's:
        # a 400 that says so, and no cooldown for a deployment that serves chat well.
        unsupported = InvalidRequest(
            f"The model '{request.model}' cannot count tokens: its upstream has no chat /tokenize endpoint "
            "(vLLM and SGLang have one).",
            param="model",
        )
        try:
            raw = await self._read(self._post(self._urls["tokenize"], body))
        except UpstreamAuthError:
            raise unsupported from None
        except UpstreamStatusError as exc:
            if exc.status < 500 and exc.status != 429:
                raise unsupported from None
            raise
        try:
            result = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise unsupported from None
        count = result.get("count") if isinstance(result, dict) else None
        if not isinstance(count, int):
            raise unsupported
        return count

    # ------------------------------------------------------------------ the call

    def _request(self, kind: str, request: BaseModel, model: str) -> Call:
        """The upstream call: the client's fields as sent (extras included), ``model`` replaced."""
        if isinstance(request, WireModel):
            raw = request.wire_bytes(model)
            if raw is not None:  # the client's own bytes, only the model's name changed
                return Call(self._urls[kind], raw, None)
            wire = request.wire_body()
        else:
            wire = None
        # The JSON as sent, when it was kept: dumping the models again costs as much as parsing them.
        body = wire if wire is not None else request.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = model
        return self._post(self._urls[kind], body)

    def _iter_deltas(self, request: SamplingFields, model: str, kind: Kind) -> AsyncIterator[Delta]:
        return self._iter_call(self._request(kind, request, model), kind, stream=bool(request.stream))

    async def _iter_call(self, call: Call, kind: Kind, *, stream: bool) -> AsyncIterator[Delta]:
        async with self._open(call) as response:
            content_type = response.headers.get("content-type", "")
            if stream and not content_type.startswith("application/json"):
                events = ChunkStream(kind, redact=self._redact)
                async for batch in self._iter_data(response):
                    for data in batch:
                        for delta in events.feed(data):
                            yield delta
                for delta in events.end():
                    yield delta
            else:
                for delta in whole_deltas(json_object(await read_body(response)), kind):
                    yield delta
