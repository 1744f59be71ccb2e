"""Request ids and the access log, as pure ASGI middleware.

Every response carries ``x-request-id``: the client's own when it sent a sane one, else a new one.
Each request gets a ``RequestRecord`` in its ASGI scope's state, which the serving code fills in
(model, tokens, time to first token); the middleware writes one access-log line per request when the
response is over, as text or as one JSON object.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..protocol import random_hex
from ..providers.base import TokenUsage

__all__ = ["HEADER", "RequestIdMiddleware", "RequestRecord", "record_of", "route_of"]

access_logger = logging.getLogger("interference.access")

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
_STATE_KEY = "interference_request"
# A client's id is echoed only when it is short and printable, so it cannot forge log lines.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestRecord:
    """What one request did, filled in as it runs; read once, by the access log."""

    id: str
    started: float
    model: str | None = None
    usage: TokenUsage | None = None
    ttft: float | None = None

    def first_output(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started


def record_of(request: Request) -> RequestRecord | None:
    """The record the middleware placed in this request's scope (None when it is not installed)."""
    record = request.scope.get("state", {}).get(_STATE_KEY)
    return record if isinstance(record, RequestRecord) else None


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(given):
                return given
            break
    return random_hex()


def route_of(scope: Scope) -> str:
    """The matched route's template with its mount prefix (``/v1/models/{model_id:path}``), else the path."""
    path: str = scope["path"]
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str) or not template:
        return path
    # FastAPI may hand over the included router's own route, without the prefix it was mounted under.
    at = path.find(template.split("{", 1)[0])
    return path[:at] + template if at > 0 else template


class RequestIdMiddleware:
    """Adds ``x-request-id`` to every HTTP response and writes the access log (unless ``log`` is off)."""

    def __init__(
        self, app: ASGIApp, *, log: bool = True, log_format: Literal["text", "json"] = "text"
    ) -> None:
        self.app = app
        self._log = log
        self._format = log_format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(id=_request_id(scope), started=time.perf_counter())
        scope.setdefault("state", {})[_STATE_KEY] = record
        status = 500  # what the client gets if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER_BYTES, record.id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self._log:
                self._write(scope, record, status)

    def _write(self, scope: Scope, record: RequestRecord, status: int) -> None:
        path = route_of(scope)
        duration = time.perf_counter() - record.started
        usage = record.usage
        if self._format == "json":
            entry: dict[str, Any] = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": record.id,
                "method": scope["method"],
                "route": path,
                "model": record.model,
                "status": status,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "ttft_ms": round(record.ttft * 1000, 1) if record.ttft is not None else None,
                "duration_ms": round(duration * 1000, 1),
            }
            access_logger.info("%s", orjson.dumps(entry).decode())
            return
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        extras = f" model={record.model}" if record.model else ""
        if usage is not None:
            extras += f" tokens={usage.prompt_tokens}+{usage.completion_tokens}"
        if record.ttft is not None:
            extras += f" ttft={record.ttft * 1000:.0f}ms"
        access_logger.info(
            '%s "%s %s" %d %.0fms id=%s%s',
            where, scope["method"], scope["path"], status, duration * 1000, record.id, extras,
        )  # fmt: skip
