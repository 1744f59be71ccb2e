"""A byte-bounded LRU of saved sequence states, keyed by the tokens they hold.

Before a slot's KV is overwritten by a different prompt, the scheduler saves it here (llama.cpp's
per-sequence state, a few tens of KB per token). On admission the entry sharing the longest prefix
with the new prompt can be restored into any slot, so a conversation that lost its slot resumes
without prefilling its history again. Pure bookkeeping: the bytes are opaque here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .prefix import common_prefix

__all__ = ["CacheEntry", "PromptCache"]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """The KV of one token sequence, as saved by ``llama_state_seq_get_data``."""

    tokens: tuple[int, ...]
    state: bytearray

    @property
    def size(self) -> int:
        return len(self.state)


def _is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and common_prefix(short, long) == len(short)


class PromptCache:
    """Entries in least-recently-used order; their states never hold more than ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("budget must be >= 0")
        self.budget = budget
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # id -> entry, oldest first
        self._next_id = 0
        self.bytes_held = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CacheEntry]:
        """Entries, least recently used first."""
        return list(self._entries.values())

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds ``tokens`` (or a longer sequence starting with them)."""
        return any(_is_prefix(tokens, e.tokens) for e in self._entries.values())

    def best(self, prompt: Sequence[int]) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` and that length (marked as used)."""
        best_id, best_len = -1, 0
        for key, entry in self._entries.items():
            n = common_prefix(entry.tokens, prompt)
            # On a tie the smaller state is cheaper to restore.
            if n > best_len or (n == best_len and n > 0 and entry.size < self._entries[best_id].size):
                best_id, best_len = key, n
        if best_id < 0:
            return None, 0
        self._entries.move_to_end(best_id)
        return self._entries[best_id], best_len

    def discard(self, entry: CacheEntry) -> None:
        """Drop ``entry`` (once restored into a slot that will save a longer version of it)."""
        for key, held in self._entries.items():
            if held is entry:
                del self._entries[key]
                self.bytes_held -= entry.size
                return

    def put(self, tokens: Sequence[int], state: bytearray) -> bool:
        """Store a state; False when it is larger than the whole budget or an entry already covers it.

        Entries that are prefixes of ``tokens`` go: the new state holds their KV too.
        """
        if not tokens or len(state) > self.budget or self.covers(tokens):
            return False
        for key in [k for k, e in self._entries.items() if _is_prefix(e.tokens, tokens)]:
            self.bytes_held -= self._entries.pop(key).size
        while self._entries and self.bytes_held + len(state) > self.budget:
            _, old = self._entries.popitem(last=False)
            self.bytes_held -= old.size
            self.evictions += 1
        self._entries[self._next_id] = CacheEntry(tuple(tokens), state)
        self._next_id += 1
        self.bytes_held += len(state)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_held = 0
