"""Local models under one memory budget: who may load, who is evicted to make room, who idles out.

The pool keeps no engines itself; each ``ManagedLocalProvider`` owns its own and asks the pool for
room before it loads. Every decision runs on the event loop under one ``asyncio.Condition``, so the
book-keeping needs no other lock; only the loads and unloads themselves run in worker threads.

- A model counts against the budget from the moment it starts loading until its unload has finished:
  its weights, KV pool and compute buffers (``Footprint.total``).
- The prompt caches of all local engines are one elastic pool (``PromptCachePool``), counted once: its
  limit is what the models leave of the budget, up to ``--cache-ram``. Room for a model comes from the
  cache first (least recently used entries go); only then are models evicted, so a model is refused
  only when its own weights, KV and buffers cannot fit beside the models that stay (pinned or busy).
- To make room, idle (no request in flight), unpinned, loaded models are unloaded, least recently
  used first. A model that cannot fit even alone fails at once (``InsufficientMemory``); one that
  could fit once a busy model goes idle waits for that, until its deadline.
- Idle models unload after their TTL; the sweep runs every ``TTL_SWEEP`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..engine.cache_pool import PromptCachePool
from ..engine.footprint import Footprint
from ..errors import InsufficientMemory
from ..protocol import MemoryReport

__all__ = ["TTL_SWEEP", "ModelPool", "PoolMember"]

MIB = 2**20

logger = logging.getLogger(__name__)

TTL_SWEEP = 0.5  # seconds between idle checks: an idle model unloads within its TTL plus this


class PoolMember(Protocol):
    """What the pool needs of a model it manages (``ManagedLocalProvider`` is the one kind)."""

    model_id: str
    memory_mib: int
    footprint: Footprint
    ttl: float
    last_used: float

    @property
    def evictions(self) -> int: ...
    @property
    def holds_memory(self) -> bool: ...
    @property
    def is_evictable(self) -> bool: ...
    def mark_loading(self) -> None: ...
    def mark_unloading(self) -> None: ...
    async def finish_unload(self, *, reason: str) -> None: ...
    async def unload_idle(self, *, reason: str) -> None: ...


class ModelPool:
    """The managed local models of one app and the memory budget they share."""

    def __init__(
        self,
        *,
        budget_mib: int | None,
        load_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        cache_pool: PromptCachePool | None = None,
        budget_auto: bool = False,
    ) -> None:
        self.budget_mib = budget_mib
        # MiB the embedding model holds now: its estimate once it has loaded (on first use), else 0.
        self.embedding_usage: Callable[[], int] = lambda: 0
        self.budget_auto = budget_auto
        self.cache_pool = cache_pool
        self.load_timeout = load_timeout
        self.clock = clock
        self.members: list[PoolMember] = []
        self._changed: asyncio.Condition | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._timed: asyncio.Event | None = None  # set once a member with an idle TTL is registered

    @property
    def changed(self) -> asyncio.Condition:
        """Notified whenever a model's state or its count of requests in flight changes."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def register(self, member: PoolMember) -> None:
        self.members.append(member)
        if member.ttl > 0:
            self.timed.set()

    @property
    def timed(self) -> asyncio.Event:
        if self._timed is None:
            self._timed = asyncio.Event()
        return self._timed

    def start(self) -> None:
        """Start the idle sweep (it also covers models that join later, from the models dir)."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    @property
    def embedding_mib(self) -> int:
        return self.embedding_usage()

    def used_mib(self) -> int:
        """Estimated MiB of every model loaded, loading or unloading, and of the embedding model."""
        return self.embedding_mib + sum(m.memory_mib for m in self.members if m.holds_memory)

    def report(self) -> MemoryReport:
        """The budget and what uses it, for /v1/models, /metrics and the start-up line."""
        held = [m for m in self.members if m.holds_memory]
        pool = self.cache_pool
        return MemoryReport(
            budget_mb=self.budget_mib,
            budget_auto=self.budget_auto,
            models_mb=sum(m.memory_mib for m in held),
            embedding_mb=self.embedding_mib,
            kv_mb=-(-sum(m.footprint.kv_cache for m in held) // MIB),
            prompt_cache_mb=self.cache_mib(),
            prompt_cache_limit_mb=pool.limit // MIB if pool is not None else 0,
            prompt_cache_released_mb=pool.released // MIB if pool is not None else 0,
            evictions=sum(m.evictions for m in self.members),
        )

    def cache_mib(self) -> int:
        """MiB the shared prompt cache holds now."""
        return -(-self.cache_pool.held() // MIB) if self.cache_pool is not None else 0

    def _settle_cache(self, extra_mib: int = 0) -> None:
        """Give the prompt cache what the models (and ``extra_mib`` about to load) leave of the budget."""
        if self.cache_pool is None:
            return
        if self.budget_mib is None:
            self.cache_pool.set_limit(self.cache_pool.cap)
        else:
            self.cache_pool.set_limit((self.budget_mib - self.used_mib() - extra_mib) * MIB)

    async def notify(self) -> None:
        self._settle_cache()
        async with self.changed:
            self.changed.notify_all()

    async def reserve(self, member: PoolMember, deadline: float) -> None:
        """Make room for ``member`` (evicting idle models), then count it as loading.

        Raises ``InsufficientMemory`` when it cannot fit, alone or by ``deadline``.
        """
        budget = self.budget_mib
        need = member.memory_mib
        if budget is not None and need + self.embedding_mib > budget:
            raise InsufficientMemory(
                f"The model '{member.model_id}' needs about {need} MiB, more than the memory budget of "
                f"{budget} MiB (--memory-budget) allows even alone"
                + (f" beside the embedding model ({self.embedding_mib} MiB)." if self.embedding_mib else ".")
            )
        async with self.changed:
            while True:
                if budget is None or self.used_mib() + need <= budget:
                    self._settle_cache(need)  # the cache gives room back first
                    member.mark_loading()
                    self.changed.notify_all()
                    return
                victims = self._victims(need, budget)
                if victims:
                    for victim in victims:
                        victim.mark_unloading()
                    self.changed.release()
                    try:
                        await asyncio.gather(*(v.finish_unload(reason="evicted") for v in victims))
                    finally:
                        await self.changed.acquire()
                    continue
                remaining = deadline - self.clock()
                if remaining <= 0:
                    busy = ", ".join(m.model_id for m in self.members if m.holds_memory) or "none"
                    raise InsufficientMemory(
                        f"The model '{member.model_id}' (about {need} MiB) does not fit the memory budget of "
                        f"{budget} MiB (--memory-budget) beside the models in use ({busy}), and none became "
                        "idle in time. Retry later."
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), timeout=remaining)

    def _victims(self, need: int, budget: int) -> list[PoolMember]:
        """Idle, unpinned loaded models, least recently used first, enough to fit ``need``; else none."""
        idle = sorted((m for m in self.members if m.is_evictable), key=lambda m: m.last_used)
        free = budget - self.used_mib()
        chosen: list[PoolMember] = []
        for m in idle:
            if free >= need:
                break
            chosen.append(m)
            free += m.memory_mib
        return chosen if free >= need else []

    async def _sweep(self) -> None:
        while True:
            # Until a model that unloads on its own is registered (never, with the default --model-ttl 0)
            # there is nothing to check: an idle server does not wake twice a second for it.
            await self.timed.wait()
            await asyncio.sleep(TTL_SWEEP)
            now = self.clock()
            for m in list(self.members):
                if m.ttl > 0 and m.is_evictable and now - m.last_used >= m.ttl:
                    try:
                        await m.unload_idle(reason="ttl")
                    except Exception:  # one failed unload must not stop the sweep for the others
                        logger.exception("unloading %s after its idle TTL failed", m.model_id)
