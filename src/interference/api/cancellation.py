"""Cancel a non-streaming handler when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
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
    """Run ``work``, racing it against the client's disconnect; whichever ends first cancels the other.

    Safe only once the body has been read, so the listener sees nothing but the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return Response(status_code=CLIENT_CLOSED)
