"""POST /v1/chat/completions."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.responses import Response

from ..protocol import ChatCompletionRequest, new_id
from ..providers.base import Delta
from ..router import Router
from . import sse
from .request_log import RequestRecord
from .serving import ChunkEnvelope, fold, open_stream, sse_frames, usage_dict
from .shutdown import Shutdown

__all__ = ["ChatServing"]


class ChatServing:
    def __init__(self, router: Router, shutdown: Shutdown) -> None:
        self._router = router
        self._shutdown = shutdown

    async def create(
        self, request: ChatCompletionRequest, *, record: RequestRecord | None = None
    ) -> Response:
        first, stream = await open_stream(self._router.chat(request), record)
        cid, created, model = new_id("chatcmpl"), int(time.time()), request.model
        if not request.stream:
            folded = await fold(first, stream, record)
            choices = [
                {
                    "index": i,
                    "message": _message(folded.text(i), folded.calls(i), folded.reasoning(i)),
                    "logprobs": folded.logprobs.get(i),
                    "finish_reason": folded.finish.get(i),
                }
                for i in folded.indices
            ]
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage_dict(folded.usage),
                "system_fingerprint": None,
            }
            return Response(orjson.dumps(body), media_type="application/json")

        envelope = ChunkEnvelope(cid, "chat.completion.chunk", created, model)

        def chunks(delta: Delta) -> list[bytes]:
            out = []
            if delta.text or delta.tool_calls or delta.logprobs or delta.reasoning:
                message: dict[str, Any] = {"content": delta.text} if delta.text else {}
                if delta.reasoning:
                    message["reasoning_content"] = delta.reasoning
                if delta.tool_calls:
                    message["tool_calls"] = delta.tool_calls
                choice = {
                    "index": delta.index,
                    "delta": message,
                    "logprobs": delta.logprobs,
                    "finish_reason": None,
                }
                out.append(envelope.frame(choice))
            if delta.finish_reason is not None:
                # The finish goes in a chunk of its own with an empty delta, as OpenAI sends it.
                choice = {
                    "index": delta.index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": delta.finish_reason,
                }
                out.append(envelope.frame(choice))
            return out

        # Every choice opens with its role, as OpenAI streams n > 1.
        role = {"role": "assistant", "content": ""}
        roles = [
            envelope.frame({"index": i, "delta": role, "logprobs": None, "finish_reason": None})
            for i in range(request.n or 1)
        ]
        frames = sse_frames(
            first,
            stream,
            chunks=chunks,
            openings=roles,
            usage_chunk=envelope.usage_chunk if request.include_usage else None,
            record=record,
            shutdown=self._shutdown,
        )
        return sse.EventStream(frames)


def _message(text: str, tool_calls: list[dict[str, Any]], reasoning: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:  # as vLLM, DeepSeek and llama-server return a thinking model's reasoning
        message["reasoning_content"] = reasoning
    if tool_calls:
        # OpenAI sends null content beside tool calls when the model wrote no text.
        message["content"] = text or None
        message["tool_calls"] = tool_calls
    return message
