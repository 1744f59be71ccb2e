"""The shared KV pool's books (engine/kv_pool.py), on slots built by hand: which idle slots give their
cells back, in which order prompts get room, and which stream is cut when the pool runs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from interference.engine.kv_pool import KvPool
from interference.engine.slots import Job, Phase, Slot


@dataclass
class _Handle:
    deadline: float
    prompt: tuple[int, ...]

    @property
    def request(self) -> Any:
        return self


@dataclass
class _Placement:
    """Records what the pool asks of the placement: saves to the prompt cache, then forgetting a slot."""

    pending_copy: set[int] = field(default_factory=set)
    saved: list[int] = field(default_factory=list)

    def save(self, slot: Slot, *, keep: int) -> bool:
        self.saved.append(slot.seq)
        return True

    def forget(self, slot: Slot) -> None:
        slot.tokens.clear()


def _job(seq: int, *, prompt: int, cursor: int, phase: Phase, deadline: float) -> Job:
    handle = _Handle(deadline, tuple(range(prompt)))
    return Job(cast(Any, handle), cast(Any, None), n_cached=0, cursor=cursor, seq=seq, phase=phase)


def _pool(slots: list[Slot], size: int) -> tuple[KvPool, _Placement]:
    placement = _Placement()
    return KvPool(size, slots, cast(Any, placement)), placement


def test_idle_slots_give_back_their_cells_least_recently_used_first() -> None:
    old = Slot(seq=0, tokens=[1] * 40, last_used=1.0)
    new = Slot(seq=1, tokens=[1] * 40, last_used=2.0)
    busy = Slot(seq=2, tokens=[1] * 10)
    busy.job = _job(2, prompt=10, cursor=10, phase=Phase.GENERATE, deadline=1.0)
    pool, placement = _pool([old, new, busy], size=100)
    assert pool.free() == 10
    assert pool.make_room(30) == 50
    assert placement.saved == [0] and not old.tokens and len(new.tokens) == 40
    assert pool.make_room(100) == 90  # all idle cells, never the busy slot's
    assert placement.saved == [0, 1] and len(busy.tokens) == 10


def test_prompts_are_served_in_arrival_order() -> None:
    late = Slot(seq=0)
    late.job = _job(0, prompt=30, cursor=0, phase=Phase.PREFILL, deadline=5.0)
    early = Slot(seq=1, tokens=[1] * 20)
    early.job = _job(1, prompt=50, cursor=20, phase=Phase.PREFILL, deadline=1.0)
    pool, _ = _pool([late, early], size=100)
    assert [(slot.seq, left) for slot, _, left in pool.prefill_order([late, early])] == [(1, 30), (0, 30)]


def test_the_longest_stream_is_cut_when_streams_alone_outgrow_the_pool() -> None:
    short = Slot(seq=0, tokens=[1] * 40)
    short.job = _job(0, prompt=10, cursor=10, phase=Phase.GENERATE, deadline=1.0)
    long = Slot(seq=1, tokens=[1] * 60)
    long.job = _job(1, prompt=10, cursor=10, phase=Phase.GENERATE, deadline=2.0)
    pool, _ = _pool([short, long], size=100)  # no free cell, two tokens to decode
    cut: list[int] = []

    def finish(slot: Slot, job: Job) -> None:
        cut.append(slot.seq)
        slot.job = None  # the scheduler releases it; its KV stays until the pool needs the cells

    assert pool.room(finish) == 60  # the cut stream is idle now: its cells went back
    assert cut == [1] and not long.tokens and len(short.tokens) == 40
