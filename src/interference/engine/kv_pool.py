"""One KV pool shared by every slot (llama.cpp's unified KV cache), and the accounting it needs.

With a unified pool any one sequence may grow up to the model's trained context while the other slots
are idle, instead of owning a fixed slice of ``n_ctx``. llama.cpp no longer stops a sequence at its
slice, so the scheduler keeps the books itself, once per step:

- the cells in use are the tokens every slot holds (idle slots keep their KV for prefix reuse);
- when the step needs more cells than are free, idle slots give theirs back, least recently used first,
  each saved to the prompt cache first when it has one;
- prompts are prefilled in the prefill policy's order (prefill.py), and a prompt starts (or goes on)
  only when what is left of it fits beside the remainder of the prompts ahead of it: prefills never
  deadlock each other;
- if the generating streams alone outgrow the pool, the longest is finished with "length".
"""

from __future__ import annotations

from collections.abc import Callable

from .placement import Placement
from .slots import Job, Phase, Slot

__all__ = ["KvPool"]


class KvPool:
    def __init__(self, size: int, slots: list[Slot], placement: Placement) -> None:
        self.size = size
        self._slots = slots
        self._placement = placement

    def free(self) -> int:
        return self.size - sum(len(slot.tokens) for slot in self._slots)

    def make_room(self, need: int) -> int:
        """Give back idle slots' cells until ``need`` are free (or no idle slot holds any); returns the free
        cells."""
        idle = [
            s for s in self._slots if s.job is None and s.tokens and s.seq not in self._placement.pending_copy
        ]
        for slot in sorted(idle, key=lambda s: s.last_used):
            if self.free() >= need:
                break
            self._placement.save(slot, keep=0)
            self._placement.forget(slot)
        return self.free()

    def prefill_order(self, active: list[Slot]) -> list[tuple[Slot, Job, int]]:
        """Jobs that still have prompt to evaluate, oldest first, with how much is left of it (the prefill
        policy reorders them)."""
        out = []
        for slot in sorted(active, key=lambda s: s.job.handle.deadline if s.job else 0.0):
            job = slot.job
            if job is None or job.phase is not Phase.PREFILL or job.leader is not None:
                continue
            out.append((slot, job, len(job.handle.request.prompt) - job.cursor))
        return out

    @staticmethod
    def longest_generating(active: list[Slot]) -> Slot | None:
        generating = [s for s in active if s.job is not None and s.job.phase is Phase.GENERATE]
        return max(generating, key=lambda s: len(s.tokens), default=None)

    def room(self, cut: Callable[[Slot, Job], None]) -> int:
        """Free cells for the next step: idle slots give theirs back as needed, and while the generating
        streams alone do not fit, ``cut`` finishes the longest of them ("length")."""
        active = [s for s in self._slots if s.job is not None]
        decoding = sum(1 for s in active if s.job is not None and s.job.phase is Phase.GENERATE)
        prompts = sum(left for _, _, left in self.prefill_order(active))
        free = self.make_room(decoding + prompts)
        while free < decoding:
            longest = self.longest_generating(active)
            assert longest is not None and longest.job is not None
            cut(longest, longest.job)
            active.remove(longest)
            decoding -= 1
            free = self.make_room(decoding + prompts)
        return free
