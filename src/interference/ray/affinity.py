"""Which engine replica holds a conversation: prompt-prefix hashes and a bounded table of them.

Pure bookkeeping, no Ray: ``prefix_hashes`` turns a request into a chain of hashes, one per message
(the first link also covers the model, the tools and the system prompt), so that every turn of a
conversation starts with the chain of the turn before it. ``AffinityTable`` remembers which replica
served each link, least recently used first out, and finds the longest link a live replica holds.
``home`` is where a conversation goes when the table knows nothing of it: rendezvous hashing of the
conversation's opening (its chain up to the first user message) over the replicas, the same answer
in every ingress replica without any shared state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from pydantic_core import to_json

__all__ = ["PROMPT_BLOCK_CHARS", "AffinityTable", "home", "prefix_hashes"]

# A completion prompt (one string) is chained in blocks of this many characters.
PROMPT_BLOCK_CHARS = 256

R = TypeVar("R", bound=Hashable)
K = TypeVar("K", bound=Hashable)


def _digest(previous: bytes, part: bytes) -> bytes:
    return hashlib.blake2b(previous + part, digest_size=16).digest()


def _json(value: Any) -> bytes:
    return to_json(value, fallback=str)


def prefix_hashes(request: Any, model: str) -> tuple[list[bytes], int]:
    """The chain of prefix hashes of ``request``, and the index of its conversation's opening link.

    Chat and Messages requests chain one link per message; a completion prompt one link per
    ``PROMPT_BLOCK_CHARS`` characters. Requests without a prompt (embeddings) have no chain."""
    head = _json([model, getattr(request, "tools", None), getattr(request, "system", None)])
    messages = getattr(request, "messages", None)
    if isinstance(messages, list) and messages:
        chain: list[bytes] = []
        opening = -1
        link = head
        for index, message in enumerate(messages):
            link = _digest(link, _json(message))
            chain.append(link)
            if opening < 0 and getattr(message, "role", None) == "user":
                opening = index
        return chain, max(opening, 0)
    prompt = getattr(request, "prompt", None)
    if prompt is None:
        return [], 0
    text = prompt if isinstance(prompt, str) else _json(prompt).decode()
    chain = []
    link = head
    for start in range(0, max(len(text), 1), PROMPT_BLOCK_CHARS):
        link = _digest(link, text[start : start + PROMPT_BLOCK_CHARS].encode())
        chain.append(link)
    return chain, 0


def home(opening: bytes, replicas: Sequence[R], name: Any = str) -> R:
    """The replica that rendezvous hashing gives ``opening``: stable while the replica set is."""
    return max(replicas, key=lambda r: hashlib.blake2b(opening + name(r).encode(), digest_size=8).digest())


class AffinityTable(Generic[K]):
    """Prefix hash → the replica that last served a prompt starting with it, at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._holder: OrderedDict[bytes, K] = OrderedDict()

    def __len__(self) -> int:
        return len(self._holder)

    def lookup(self, chain: Sequence[bytes], live: Iterable[K]) -> K | None:
        """The live replica holding the longest link of ``chain``, or None."""
        alive = set(live)
        for link in reversed(chain):
            holder = self._holder.get(link)
            if holder is not None and holder in alive:
                self._holder.move_to_end(link)
                return holder
        return None

    def record(self, chain: Sequence[bytes], replica: K) -> None:
        """``replica`` now holds every link of ``chain`` (it has just been given the whole prompt)."""
        for link in chain:
            self._holder[link] = replica
            self._holder.move_to_end(link)
        while len(self._holder) > self.capacity:
            self._holder.popitem(last=False)

    def forget(self, replica: K) -> None:
        """Drop what a replica that is gone held."""
        for link in [link for link, holder in self._holder.items() if holder == replica]:
            del self._holder[link]
