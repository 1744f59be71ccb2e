"""The asyncio side of a request: a cancellable async iterator of engine outputs."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections import deque
from collections.abc import Callable

from .types import EngineOutput, EngineRequest

__all__ = ["EngineUnavailable", "HandleState", "QueueFull", "RequestHandle", "WaitQueue", "estimate_wait"]

# Retry-After hints stay within these bounds (seconds).
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 60.0


class QueueFull(Exception):
    """More requests are waiting than the engine accepts; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float = MIN_RETRY_AFTER) -> None:
        super().__init__(f"queue full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class EngineUnavailable(Exception):
    """The engine's thread has stopped (it failed, or the server is shutting down)."""


def estimate_wait(*, position: int, n_slots: int, service_seconds: float | None) -> float:
    """Seconds until a request at ``position`` in the waiting queue (0 = next) would get a slot.

    Every ``n_slots`` requests ahead of it take about one recent service time to clear. Without a
    recent service time the minimum is returned.
    """
    if not service_seconds or service_seconds <= 0:
        return MIN_RETRY_AFTER
    rounds = (position + 1) / max(1, n_slots)
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, rounds * service_seconds))


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
        self.state = HandleState.QUEUED  # changed only under _lock: see try_start and abort
        self._lock = threading.Lock()
        self._loop = loop
        # Outputs not taken yet (one a step at most, so a request's are bounded by its max_tokens), and
        # the future its reader waits on when there are none. An asyncio.Queue did the same with a
        # future a get and more code a token: a quarter of the event loop's work a token at one stream.
        self._outputs: deque[EngineOutput] = deque()
        self._waiter: asyncio.Future[None] | None = None
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
        self._loop.call_soon_threadsafe(self._put, output)

    def mark(self, output: EngineOutput) -> None:
        if output.finish_reason is not None or output.error is not None:
            with self._lock:
                self.state = HandleState.DONE

    def try_start(self) -> bool:
        """QUEUED -> RUNNING, atomically with ``abort``: False when the request was aborted first."""
        with self._lock:
            if self.state is not HandleState.QUEUED:
                return False
            self.state = HandleState.RUNNING
            return True

    # Called on the event loop.
    @staticmethod
    def deliver_all(items: list[tuple[RequestHandle, EngineOutput]]) -> None:
        for handle, output in items:
            handle._put(output)

    def _put(self, output: EngineOutput) -> None:
        self._outputs.append(output)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        """Stop generating; a no-op once finished. Safe from any thread."""
        with self._lock:
            if self.state not in (HandleState.QUEUED, HandleState.RUNNING):
                return
            self.state = HandleState.ABORTED
        self._on_abort(self)

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> EngineOutput:
        if self._finished:
            raise StopAsyncIteration
        while not self._outputs:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        output = self._outputs.popleft()
        if output.finish_reason is not None or output.error is not None:
            self._finished = True
        return output


class WaitQueue:
    """Handles waiting for a slot, bounded by free slots plus ``max_waiting``.

    Fair turns: each tenant (``EngineRequest.tenant``) has its own FIFO, and ``pop`` serves the tenant
    that was served longest ago (a tenant with nothing served since it began waiting comes first, in
    order of arrival). So tenants with waiting requests take turns round-robin, and a tenant that arrives
    behind another's burst waits for at most one freed slot, however recently that burst was served.
    """

    def __init__(self, *, n_slots: int, max_waiting: int) -> None:
        self._by_tenant: dict[str, deque[RequestHandle]] = {}
        # Tenants with waiting handles -> (last served, arrival): the smallest is served next. A tenant
        # not served since it began waiting has -1; ``_serial`` counts pops and arrivals.
        self._turns: dict[str, tuple[int, int]] = {}
        self._serial = 0
        self._count = 0
        self._cond = threading.Condition()
        self._capacity = n_slots + max_waiting
        self.active = 0  # handles holding a slot; changed only under the lock
        self._wakeups = 0

    @property
    def capacity(self) -> int:
        """Requests that may be running or waiting at once."""
        return self._capacity

    def put(self, handle: RequestHandle) -> None:
        """Queue ``handle``; raises ``QueueFull`` (without a wait estimate) at the bound."""
        with self._cond:
            if self._count + self.active >= self._capacity:
                raise QueueFull
            tenant = handle.request.tenant
            queue = self._by_tenant.get(tenant)
            if queue is None:
                queue = self._by_tenant[tenant] = deque()
                self._serial += 1
                self._turns[tenant] = (-1, self._serial)
            queue.append(handle)
            self._count += 1
            self._cond.notify()

    def pop(self) -> RequestHandle | None:
        """Next waiting handle that is still wanted, now RUNNING and counted as active.

        The tenant whose turn it is keeps its turn past its own aborted handles, then goes to the back.
        """
        with self._cond:
            while self._turns:
                tenant = min(self._turns, key=self._turns.__getitem__)  # a few tenants: a scan is enough
                queue = self._by_tenant[tenant]
                started = None
                while queue and started is None:
                    handle = queue.popleft()
                    self._count -= 1
                    if handle.try_start():
                        started = handle
                if queue:
                    self._serial += 1
                    self._turns[tenant] = (self._serial, 0)
                else:
                    del self._by_tenant[tenant], self._turns[tenant]
                if started is not None:
                    self.active += 1
                    return started
            return None

    def remove(self, handle: RequestHandle) -> None:
        with self._cond:
            tenant = handle.request.tenant
            queue = self._by_tenant.get(tenant)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(handle)
                    self._count -= 1
                if not queue:
                    del self._by_tenant[tenant], self._turns[tenant]
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
            if not self._count and not self._wakeups:
                self._cond.wait(timeout)
            self._wakeups = 0

    def __len__(self) -> int:
        return self._count

    def drain(self) -> list[RequestHandle]:
        with self._cond:
            items = [h for tenant in self._turns for h in self._by_tenant[tenant]]
            self._by_tenant.clear()
            self._turns.clear()
            self._count = 0
            return items
