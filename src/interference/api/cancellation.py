"""Cancel a handler, or a stream, when its client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

__all__ = ["until_disconnect", "with_cancellation"]

T = TypeVar("T", bound=Response)
R = TypeVar("R")

# nginx's code for "client closed request"; nobody reads it, but access logs show it.
CLIENT_CLOSED = 499


async def until_disconnect(receive: Receive, work: Awaitable[R]) -> tuple[bool, R | None]:
    """Run ``work`` in this task while one watcher task reads ``receive`` for the client's disconnect;
    a disconnect cancels ``work``, and its end cancels the watcher. Returns whether the client left,
    and ``work``'s result (None when it left).

    Safe only once the body has been read, so the watcher sees nothing but the disconnect.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return False, await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown, a server timeout): not ours to absorb
        current.uncancel()
        return True, None
    finally:
        watcher.cancel()


async def with_cancellation(request: Request, work: Awaitable[T]) -> T | Response:
    """``work``'s response, or a 499 when the client left first (``work`` is then cancelled)."""
    _, response = await until_disconnect(request.receive, work)
    return response if response is not None else Response(status_code=CLIENT_CLOSED)
