"""The asyncio side of a request: a cancellable async iterator of engine outputs."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections import deque
from collections.abc import Callable

from .types import EngineOutput, EngineRequest

__all__ = ["HandleState", "QueueFull", "RequestHandle", "WaitQueue"]


class QueueFull(Exception):
    """More requests are waiting than the engine accepts; the client should retry later."""


class HandleState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ABORTED = "aborted"


class RequestHandle:
    """What ``Scheduler.submit`` returns: an async iterator of outputs; ``abort`` it when done with it."""

    def __init__(
        self,
        request: EngineRequest,
        loop: asyncio.AbstractEventLoop,
        on_abort: Callable[[RequestHandle], None],
        *,
        deadline: float,
    ) -> None:
        self.request = request
        self.deadline = deadline
        self.state = HandleState.QUEUED
        self._loop = loop
        self._queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._on_abort = on_abort
        self._finished = False

    @property
    def is_aborted(self) -> bool:
        return self.state is HandleState.ABORTED

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    # Called from the scheduler thread.
    def push(self, output: EngineOutput) -> None:
        """Hand one output to the event loop now (see ``deliver_all`` for a step's worth at once)."""
        self.mark(output)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, output)

    def mark(self, output: EngineOutput) -> None:
        if output.finish_reason is not None or output.error is not None:
            self.state = HandleState.DONE

    # Called on the event loop.
    @staticmethod
    def deliver_all(items: list[tuple[RequestHandle, EngineOutput]]) -> None:
        for handle, output in items:
            handle._queue.put_nowait(output)

    def abort(self) -> None:
        """Stop generating; a no-op once finished. Safe from any thread."""
        if self.state in (HandleState.QUEUED, HandleState.RUNNING):
            self.state = HandleState.ABORTED
            self._on_abort(self)

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> EngineOutput:
        if self._finished:
            raise StopAsyncIteration
        output = await self._queue.get()
        if output.finish_reason is not None or output.error is not None:
            self._finished = True
        return output


class WaitQueue:
    """FIFO of handles waiting for a slot, bounded by free slots plus ``max_waiting``."""

    def __init__(self, *, n_slots: int, max_waiting: int) -> None:
        self._items: deque[RequestHandle] = deque()
        self._cond = threading.Condition()
        self._capacity = n_slots + max_waiting
        self.active = 0  # handles holding a slot; changed only under the lock
        self._wakeups = 0

    @property
    def capacity(self) -> int:
        """Requests that may be running or waiting at once."""
        return self._capacity

    def put(self, handle: RequestHandle) -> None:
        with self._cond:
            if len(self._items) + self.active >= self._capacity:
                raise QueueFull
            self._items.append(handle)
            self._cond.notify()

    def pop(self) -> RequestHandle | None:
        """Next waiting handle that is still wanted, counted as active."""
        with self._cond:
            while self._items:
                handle = self._items.popleft()
                if not handle.is_aborted:
                    self.active += 1
                    return handle
            return None

    def remove(self, handle: RequestHandle) -> None:
        with self._cond:
            with contextlib.suppress(ValueError):
                self._items.remove(handle)
            self._cond.notify()

    def release(self) -> None:
        with self._cond:
            self.active -= 1

    def poke(self) -> None:
        with self._cond:
            self._wakeups += 1
            self._cond.notify()

    def wait(self, timeout: float) -> None:
        """Block until something is queued or poked (or ``timeout`` passes)."""
        with self._cond:
            if not self._items and not self._wakeups:
                self._cond.wait(timeout)
            self._wakeups = 0

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> list[RequestHandle]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items
