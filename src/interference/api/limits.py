"""The request body limit, as pure ASGI middleware that never holds more than the limit.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read. A body
without one (chunked) is counted as it arrives; the read that passes the limit raises
``RequestTooLarge``, which the app's handlers turn into a 413 envelope.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTooLarge
from .errors import error_response

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self._max = max_bytes

    def _error(self) -> RequestTooLarge:
        mib = self._max / 2**20
        return RequestTooLarge(f"The request body is larger than this server's limit of {mib:g} MiB.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self._max:
                    await error_response(self._error())(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)
