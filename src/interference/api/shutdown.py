"""Graceful shutdown as the app sees it: health turns 503, and streams still running at the deadline are cut.

The server (``interference.server``) calls ``begin`` when SIGTERM or SIGINT arrives and ``cut_streams``
when the shutdown timeout has passed. Each SSE generator registers the task that runs it; a cut
cancels that task, and the generator, seeing a cancellation it was sent by ``cut_streams``, takes it
back (``claim``) and ends the stream with an error event and ``[DONE]`` instead of a torn body.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import ServerShuttingDown

__all__ = ["Shutdown"]

logger = logging.getLogger(__name__)


class Shutdown:
    """The drain state of one app: built by ``create_app``, driven by the server."""

    def __init__(self) -> None:
        self.is_draining = False
        self._streams: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()

    def begin(self) -> None:
        self.is_draining = True

    def track(self) -> asyncio.Task[object] | None:
        """Register the running stream's task; pass the result to ``untrack`` when the stream ends."""
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        return task

    def untrack(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            self._streams.discard(task)
            self._cut.discard(task)

    def cut_streams(self) -> int:
        """Cancel every running stream; each ends with an error event. Returns how many."""
        streams = self._streams - self._cut
        for task in streams:
            self._cut.add(task)
            task.cancel()
        if streams:
            logger.warning("shutdown timeout passed: ending %d running stream(s) with an error", len(streams))
        return len(streams)

    def claim(self, task: asyncio.Task[object] | None) -> bool:
        """True (and the cancellation taken back) if ``cut_streams`` cancelled ``task``."""
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        self._streams.discard(task)
        task.uncancel()
        return True

    def error(self) -> ServerShuttingDown:
        return ServerShuttingDown("The server is shutting down; this stream was ended before it finished.")
