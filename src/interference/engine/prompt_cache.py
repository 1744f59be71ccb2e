"""A byte-bounded LRU of saved sequence states, keyed by the tokens they hold.

Before a slot's KV is overwritten by a different prompt, the scheduler saves it here (llama.cpp's
per-sequence state, a few tens of KB per token). On admission the entry sharing the longest prefix
with the new prompt can be restored into any slot, so a conversation that lost its slot resumes
without prefilling its history again. Pure bookkeeping: the bytes are opaque here.

Buffers are recycled. A state is megabytes; a new buffer costs a page fault per 4 KiB page on first
touch, which on some machines (virtual machines touching fresh memory) is tens of milliseconds per
save, all of it in the way of the request being admitted. So the buffers of entries that leave the
cache (restored into a slot, superseded or evicted) are kept as spares, at most ``MAX_SPARES`` of
them and within the same byte budget, and the next save writes into one of them.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .cache_pool import PromptCachePool
from .prefix import common_prefix

__all__ = ["MAX_SPARES", "CacheEntry", "PromptCache", "PromptCachePool"]

# Buffers kept for the next saves; a save and a restore per admission need only one or two.
MAX_SPARES = 2


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """The KV of one token sequence, as saved by ``llama_state_seq_get_data``: the first ``length``
    bytes of ``state`` (a recycled buffer may be longer)."""

    tokens: tuple[int, ...]
    state: bytearray
    length: int

    @property
    def size(self) -> int:
        """Bytes held in memory (the whole buffer)."""
        return len(self.state)


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run a ``PromptCache`` method under the cache's lock."""

    @functools.wraps(method)
    def run(self: PromptCache, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return cast(_F, run)


def _is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and common_prefix(short, long) == len(short)


class PromptCache:
    """Entries in least-recently-used order. Their buffers and the spares never hold more than
    ``budget`` bytes together: the engine's own cap, or less when a shared ``PromptCachePool`` holds
    the rest for the other engines' caches.

    Every public method runs under the cache's lock: the engine's scheduler thread uses the cache,
    and the pool may take entries back from another thread (``release``)."""

    def __init__(self, budget: int, *, pool: PromptCachePool | None = None) -> None:
        if budget < 0:
            raise ValueError("budget must be >= 0")
        self.cap = budget
        self.pool = pool
        self.lock = threading.RLock()
        self._stamps: dict[int, int] = {}  # entry id -> the pool's use counter when last used
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # id -> entry, oldest first
        self._spares: list[bytearray] = []
        self._next_id = 0
        self.bytes_held = 0  # entries and spares
        self.evictions = 0
        if pool is not None:
            pool.attach(self)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def budget(self) -> int:
        """Bytes this cache may hold now: its cap, less what the shared pool gives the others."""
        if self.pool is None:
            return self.cap
        return min(self.cap, self.pool.room_for(self))

    def oldest_use(self) -> int | None:
        """The pool's use counter of this cache's least recently used entry (-1: spares only)."""
        with self.lock:
            if self._spares:
                return -1
            first = next(iter(self._entries), None)
            return None if first is None else self._stamps.get(first, 0)

    def release(self) -> int:
        """Give back the spares, else the least recently used entry; the bytes freed (0: nothing held)."""
        with self.lock:
            before = self.bytes_held
            if self._spares:
                self.bytes_held -= self.spare_bytes
                self._spares.clear()
            elif self._entries:
                key = next(iter(self._entries))
                self.bytes_held -= self._entries.pop(key).size
                self._stamps.pop(key, None)
                self.evictions += 1
            return before - self.bytes_held

    def _stamp(self, key: int) -> None:
        self._stamps[key] = self.pool.use() if self.pool is not None else 0

    def entries(self) -> list[CacheEntry]:
        """Entries, least recently used first."""
        return list(self._entries.values())

    @property
    def spare_bytes(self) -> int:
        return sum(len(b) for b in self._spares)

    @property
    def spare_count(self) -> int:
        return len(self._spares)

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds ``tokens`` (or a longer sequence starting with them)."""
        return any(_is_prefix(tokens, e.tokens) for e in self._entries.values())

    @_locked
    def best(self, prompt: Sequence[int]) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` and that length (marked as used)."""
        best_id, best_len = -1, 0
        for key, entry in self._entries.items():
            n = common_prefix(entry.tokens, prompt)
            # On a tie the smaller state is cheaper to restore.
            if n > best_len or (n == best_len and n > 0 and entry.length < self._entries[best_id].length):
                best_id, best_len = key, n
        if best_id < 0:
            return None, 0
        self._entries.move_to_end(best_id)
        self._stamp(best_id)
        return self._entries[best_id], best_len

    @_locked
    def buffer(self, size: int, *, keep: CacheEntry | None = None) -> bytearray | None:
        """A buffer to save a state of ``size`` bytes into, with room made for it: None when the state
        could never fit, else a spare or a new buffer, out of the cache's accounting until ``put``
        (or ``give_back``) returns it.

        Least recently used entries are evicted until the state fits beside the rest (never ``keep``,
        a state about to be restored); their buffers are candidates for reuse. The spare that fits
        best is chosen: the smallest one large enough, else the largest (grown by the save).
        """
        if size > self.budget:
            return None
        self._evict(size, keep=keep)
        chosen = None
        if self._spares:
            large = [b for b in self._spares if len(b) >= size]
            chosen = min(large, key=len) if large else max(self._spares, key=len)
            self._spares.remove(chosen)
            self.bytes_held -= len(chosen)
            self._trim_spares(room_for=max(size, len(chosen)))
            if self.bytes_held + max(size, len(chosen)) > self.budget:
                chosen = None  # too large beside ``keep``: a new buffer of the exact size may fit
        if chosen is None:
            self._trim_spares(room_for=size)
            if self.bytes_held + size > self.budget:
                return None
            chosen = bytearray(size)
        return chosen

    @_locked
    def put(self, tokens: Sequence[int], state: bytearray, length: int | None = None) -> bool:
        """Store a state (its first ``length`` bytes; all of ``state`` by default); False when it is
        larger than the whole budget or an entry already covers it (``state`` then goes to the spares
        when there is room for it).

        Entries that are prefixes of ``tokens`` go: the new state holds their KV too.
        """
        length = len(state) if length is None else length
        if not tokens or len(state) > self.budget or self.covers(tokens):
            self.give_back(state)
            return False
        for key in [k for k, e in self._entries.items() if _is_prefix(e.tokens, tokens)]:
            self._retire(self._entries.pop(key).state)
            self._stamps.pop(key, None)
        self._evict(len(state))
        self._trim_spares(room_for=len(state))
        self._entries[self._next_id] = CacheEntry(tuple(tokens), state, length)
        self._stamp(self._next_id)
        self._next_id += 1
        self.bytes_held += len(state)
        return True

    @_locked
    def give_back(self, state: bytearray) -> None:
        """Return a buffer from ``buffer`` unused: it becomes a spare when there is room."""
        if len(self._spares) < MAX_SPARES and self.bytes_held + len(state) <= self.budget:
            self._spares.append(state)
            self.bytes_held += len(state)

    @_locked
    def discard(self, entry: CacheEntry) -> None:
        """Drop ``entry`` (once restored into a slot that will save a longer version of it); its buffer
        is kept for the next save."""
        for key, held in self._entries.items():
            if held is entry:
                del self._entries[key]
                self._stamps.pop(key, None)
                self._retire(entry.state)
                return

    @_locked
    def clear(self) -> None:
        self._entries.clear()
        self._stamps.clear()
        self._spares.clear()
        self.bytes_held = 0

    def _retire(self, state: bytearray) -> None:
        """An entry's buffer (still counted) leaves: kept as a spare, or dropped when enough are kept."""
        if len(self._spares) < MAX_SPARES:
            self._spares.append(state)
        else:
            self.bytes_held -= len(state)

    def _evict(self, size: int, *, keep: CacheEntry | None = None) -> None:
        """Evict least recently used entries (never ``keep``) until ``size`` more bytes fit beside the
        entries left; their buffers join the spares, still counted (``_trim_spares`` settles them)."""
        while self.bytes_held - self.spare_bytes + size > self.budget:
            victim = next((k for k, e in self._entries.items() if e is not keep), None)
            if victim is None:
                return
            self._spares.append(self._entries.pop(victim).state)
            self._stamps.pop(victim, None)
            self.evictions += 1

    def _trim_spares(self, *, room_for: int) -> None:
        """Drop spares, the smallest first, while there are more than ``MAX_SPARES`` or ``room_for``
        more bytes would not fit."""
        self._spares.sort(key=len, reverse=True)
        while self._spares and (len(self._spares) > MAX_SPARES or self.bytes_held + room_for > self.budget):
            self.bytes_held -= len(self._spares.pop())
