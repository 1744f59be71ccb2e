"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from starlette.responses import Response

from ..protocol import EmbeddingRequest
from ..providers.base import TokenUsage
from ..router import Router
from .request_log import RequestRecord

__all__ = ["EmbeddingServing"]


class EmbeddingServing:
    def __init__(self, router: Router) -> None:
        self._router = router

    async def create(self, request: EmbeddingRequest, *, record: RequestRecord | None = None) -> Response:
        result = await self._router.embed(request)
        if record is not None:
            record.usage = TokenUsage(result.prompt_tokens, 0)
        vectors = result.vectors.astype("<f4", copy=False)
        data: list[dict[str, Any]] = []
        for i, vector in enumerate(vectors):
            # base64 is the little-endian float32 bytes, which the openai SDK asks for by default.
            encoded: Any = (
                base64.b64encode(vector.tobytes()).decode("ascii")
                if request.encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        body = {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
        # orjson writes numpy rows directly, with float32's shortest round-trip digits.
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
