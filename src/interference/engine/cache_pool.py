"""One host-RAM budget for the prompt caches of every engine in the process.

Each engine keeps its own ``PromptCache`` (an entry is only valid for the engine that saved it), but
the caches draw on one pool: together they never hold more than the pool's ``limit``. The limit is
elastic. It starts at the pool's cap (``--cache-ram``); the memory budget lowers it to what the loaded
models leave and raises it again when they go. Lowering it gives bytes back at once: spares first,
then the least recently used entries across all caches, whichever engine saved them.

Thread-safe: each engine's scheduler thread uses its own cache (under that cache's lock); ``set_limit``
runs on any thread and takes one cache lock at a time. ``room_for`` reads the other caches' counters
without a lock (an estimate a save may overshoot by at most the one state being saved).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Protocol


class CacheMember(Protocol):
    """What the pool needs of an engine's prompt cache (``prompt_cache.PromptCache``)."""

    @property
    def bytes_held(self) -> int: ...

    def oldest_use(self) -> int | None: ...

    def release(self) -> int: ...


__all__ = ["PromptCachePool"]


class PromptCachePool:
    """The byte budget the prompt caches of all engines share."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("cap must be >= 0")
        self.cap = cap
        self.limit = cap
        self.released = 0  # bytes given back because the limit went down
        self._caches: weakref.WeakSet[CacheMember] = weakref.WeakSet()  # an engine's cache leaves with it
        self._uses = itertools.count(1)
        self._lock = threading.Lock()

    def attach(self, cache: CacheMember) -> None:
        self._caches.add(cache)

    def use(self) -> int:
        """A counter that orders entry uses across caches (least recently used: smallest)."""
        return next(self._uses)

    def held(self) -> int:
        """Bytes the caches hold now."""
        return sum(c.bytes_held for c in list(self._caches))

    def room_for(self, cache: CacheMember) -> int:
        """What ``cache`` may hold beside the others under the current limit."""
        others = sum(c.bytes_held for c in list(self._caches) if c is not cache)
        return max(0, self.limit - others)

    def set_limit(self, limit: int) -> int:
        """Set the limit (within ``0..cap``) and give back bytes, least recently used first, until the
        caches fit under it; returns the bytes given back."""
        with self._lock:
            self.limit = max(0, min(self.cap, limit))
            freed = 0
            while self.held() > self.limit:
                candidates = [(c.oldest_use(), c) for c in list(self._caches)]
                held = [(use, c) for use, c in candidates if use is not None]
                if not held:
                    break
                _, oldest = min(held, key=lambda pair: pair[0])
                got = oldest.release()
                if got <= 0:
                    break
                freed += got
            self.released += freed
            return freed
