"""Cancel a non-streaming handler when its client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["with_cancellation"]

T = TypeVar("T", bound=Response)

# nginx's code for "client closed request"; nobody reads it, but access logs show it.
CLIENT_CLOSED = 499


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def with_cancellation(request: Request, work: Awaitable[T]) -> T | Response:
    """Run ``work`` in this task while one watcher task waits for the client's disconnect; a disconnect
    cancels ``work``, and its end cancels the watcher.

    Safe only once the body has been read, so the watcher sees nothing but the disconnect.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown, a server timeout): not ours to absorb
        current.uncancel()
        return Response(status_code=CLIENT_CLOSED)
    finally:
        watcher.cancel()
