"""How much of which prompts one scheduler step evaluates: the prefill policy.

llama.cpp evaluates a batch in micro-batches one after another, and the logits of a prompt that
completes in a batch come out only once the whole batch is done. So a step's size decides how long
the streams decoding beside it wait for their next token, and when the first tokens of the prompts
in it come out. Per step:

- **Budget.** When no stream is decoding, prompts may fill the whole batch (``n_batch``): fewer
  steps for a long prompt alone. Beside decoding streams, prompts get ``chunk`` tokens minus the
  decode tokens, and fewer when the measured cost says such a step would take longer than
  ``step_target`` seconds; never fewer than ``MIN_PREFILL``, so prompts progress however many
  streams decode.
- **Storms.** When more conversations wait for their first token (prompts being evaluated and
  requests queued for a slot) than streams decode, the time target is set aside and prompts fill the
  batch as if no stream were decoding: most of the people waiting then wait for a first token, not
  for the next one, and whole batches evaluate prompts fastest.
- **Admission.** Taking a slot may move KV state between the pool and host RAM (saving what the slot
  held, restoring a cached prefix). While streams decode, one such admission a step; in a storm, as
  many as there are free slots.
- **Order.** Shortest remaining prompt first, so a storm of new conversations sees its first tokens
  one after another instead of all at the end. A prompt's age counts against its length at the
  measured prefill rate (a prompt that has waited as long as ``n`` tokens take counts ``n`` tokens
  shorter), so a long prompt is overtaken for about its own prefill time at most, never starved.
- **Filling.** Prompts fill the budget in that order, the last one in part. Ending a step where a
  first token comes out (leaving the rest of the budget unused) was measured and made storms slower:
  the decoding streams beside the prompts then free their slots later.
- **KV room.** Cells are reserved in that same order: a prompt starts (or goes on) only when what is
  left of it fits beside what is left of the prompts ahead of it, so prefills never deadlock.

The cost model is two running averages fed by every step: seconds per decode row (steps without
prompt tokens) and seconds per prompt token (the rest of a mixed step's time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["MIN_PREFILL", "PrefillPolicy"]

T = TypeVar("T")

MIN_PREFILL = 32  # prompt tokens per step beside decoding streams, whatever the time target says
COST_EWMA_ALPHA = 0.3  # weight of the newest step in the running cost averages


def _ewma(previous: float | None, value: float) -> float:
    return value if previous is None else previous + COST_EWMA_ALPHA * (value - previous)


class PrefillPolicy:
    """Owns the step budget, the prompts' order and the cost estimate (scheduler thread only)."""

    def __init__(self, *, n_batch: int, chunk: int, step_target: float) -> None:
        self.n_batch = n_batch
        self.chunk = max(1, min(chunk, n_batch))
        self.step_target = step_target  # seconds; 0: no time target, chunks of ``chunk`` tokens
        self.row_seconds: float | None = None  # one decode row, measured on steps without prompts
        self.token_seconds: float | None = None  # one prompt token, measured on steps with prompts

    def observe(self, n_decode: int, n_prompt: int, seconds: float) -> None:
        """Feed one step's ``llama_decode`` time and what the batch held."""
        if n_prompt == 0:
            if n_decode > 0:
                self.row_seconds = _ewma(self.row_seconds, seconds / n_decode)
            return
        row = self.row_seconds if self.row_seconds is not None else seconds / (n_decode + n_prompt)
        rows = n_decode * row
        self.token_seconds = _ewma(self.token_seconds, max(seconds - rows, 0.0) / n_prompt)

    @staticmethod
    def storm(n_decode: int, n_waiting: int) -> bool:
        """More conversations wait for their first token than streams decode: a storm, where prompts
        fill the batch and new conversations are admitted without delay."""
        return n_waiting > n_decode

    @classmethod
    def one_move_a_step(cls, n_decode: int, n_waiting: int) -> bool:
        """Whether admissions stop, until the next step, after one that moved KV state between the pool
        and host RAM (a save, a restore: milliseconds each). Yes while streams decode, so they wait at
        most about one step more; not in a storm, where steps are long and conversations waiting
        for a slot would wait a whole step each."""
        return n_decode > 0 and not cls.storm(n_decode, n_waiting)

    def budget(self, n_decode: int, n_waiting: int = 0) -> int:
        """Prompt tokens this step may carry beside ``n_decode`` decode tokens, with ``n_waiting``
        conversations still waiting for their first token."""
        room = self.n_batch - n_decode
        if n_decode == 0 or self.storm(n_decode, n_waiting):
            return room
        budget = self.chunk - n_decode
        if self.step_target > 0 and self.token_seconds:
            row = self.row_seconds if self.row_seconds is not None else self.token_seconds
            budget = min(budget, int((self.step_target - n_decode * row) / self.token_seconds))
        return min(max(budget, MIN_PREFILL), room)

    def order(self, prompts: Sequence[tuple[T, int, float]], now: float) -> list[tuple[T, int, float]]:
        """``(item, tokens left, admitted at)`` shortest first, a prompt's age counting against its length."""
        rate = 1.0 / self.token_seconds if self.token_seconds else 0.0
        return sorted(prompts, key=lambda p: (p[1] - rate * (now - p[2]), p[2]))

    def plan(
        self,
        n_decode: int,
        prompts: Sequence[tuple[T, int, float]],
        room: int,
        now: float,
        n_waiting: int = 0,
    ) -> list[tuple[T, int]]:
        """The prompts this step evaluates, each with how many of its tokens: ``room`` free KV cells
        are reserved in the policy's order, and the budget (with ``n_waiting`` conversations waiting
        for their first token) is spent as the module docstring says."""
        budget = self.budget(n_decode, n_waiting)
        out: list[tuple[T, int]] = []
        for item, left, _ in self.order(prompts, now):
            room -= left
            if room < 0 or budget <= 0:
                break  # it waits for room: the prompts ahead of it keep theirs
            take = min(left, budget)
            out.append((item, take))
            budget -= take
        return out
