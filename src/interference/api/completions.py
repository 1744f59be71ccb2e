"""POST /v1/completions (the legacy text completion endpoint)."""

from __future__ import annotations

import time

from starlette.responses import Response

from ..protocol import CompletionRequest, new_id
from ..providers.base import Delta
from ..router import Router
from . import sse
from .request_log import RequestRecord
from .serving import ChunkEnvelope, FastJSONResponse, fold, open_stream, sse_frames, usage_dict
from .shutdown import Shutdown

__all__ = ["CompletionServing"]


class CompletionServing:
    def __init__(self, router: Router, shutdown: Shutdown) -> None:
        self._router = router
        self._shutdown = shutdown

    async def create(self, request: CompletionRequest, *, record: RequestRecord | None = None) -> Response:
        first, stream = await open_stream(self._router.complete(request), record)
        envelope = ChunkEnvelope(new_id("cmpl"), "text_completion", int(time.time()), request.model)

        if not request.stream:
            folded = await fold(first, stream, record)
            body = envelope(
                [
                    {
                        "text": folded.text(i),
                        "index": i,
                        "logprobs": folded.logprobs.get(i),
                        "finish_reason": folded.finish.get(i),
                    }
                    for i in folded.indices
                ]
            )
            body["usage"] = usage_dict(folded.usage)
            return FastJSONResponse(body)

        def chunks(delta: Delta) -> list[bytes]:
            if not delta.text and delta.finish_reason is None and not delta.logprobs:
                return []
            choice = {
                "text": delta.text,
                "index": delta.index,
                "logprobs": delta.logprobs,
                "finish_reason": delta.finish_reason,
            }
            return [envelope.frame(choice)]

        frames = sse_frames(
            first,
            stream,
            chunks=chunks,
            openings=[],
            usage_chunk=envelope.usage_chunk if request.include_usage else None,
            record=record,
            shutdown=self._shutdown,
        )
        return sse.EventStream(frames)
