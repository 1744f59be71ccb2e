"""Server-sent events: the only place that writes ``data: ...`` frames."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DONE", "HEADERS", "MEDIA_TYPE", "encode", "encode_event"]

MEDIA_TYPE = "text/event-stream"
# Proxies (nginx) buffer responses unless told not to; each token must go out as it is made.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def encode(payload: dict[str, Any] | bytes) -> bytes:
    """One SSE event holding a JSON object (or already-encoded JSON bytes)."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def encode_event(event: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event (``event: <type>`` before the data), as the Responses API streams them."""
    return b"event: " + event.encode("ascii") + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
