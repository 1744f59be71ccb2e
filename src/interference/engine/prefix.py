"""Slot choice for prefix KV reuse: a pure function over what each idle slot holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SlotView", "common_prefix", "pick_slot"]

# A cached prefix must cover at least this share of the new prompt to be worth keeping.
MIN_SIMILARITY = 0.1


@dataclass(frozen=True, slots=True)
class SlotView:
    index: int
    tokens: Sequence[int]
    last_used: float


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share long prefixes and list slices compare in C.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pick_slot(idle: Sequence[SlotView], prompt: Sequence[int]) -> tuple[int, int]:
    """Return (slot index, tokens to reuse) for ``prompt`` among ``idle`` slots.

    The slot with the longest shared prefix wins when it covers at least ``MIN_SIMILARITY`` of the
    prompt; otherwise an empty slot, otherwise the least recently used one. At least one prompt
    token is always left to evaluate, since sampling needs its logits.
    """
    if not idle:
        raise ValueError("no idle slot")
    best, best_len = None, 0
    for view in idle:
        n = common_prefix(view.tokens, prompt)
        if n > best_len:
            best, best_len = view, n
    if best is not None and best_len >= MIN_SIMILARITY * len(prompt):
        return best.index, min(best_len, len(prompt) - 1)
    empty = [v for v in idle if not v.tokens]
    if empty:
        return empty[0].index, 0
    lru = min(idle, key=lambda v: v.last_used)
    return lru.index, 0
