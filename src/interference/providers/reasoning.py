"""Reasoning from models whose chat template has a thinking mode: ``<think>…</think>`` split off the answer.

Templates of thinking models (Qwen3, DeepSeek-R1, SmolLM3…) either open the block themselves at the
end of the generation prompt, or let the model write ``<think>`` first. Either way, what comes before
``</think>`` is the model's reasoning: it travels as ``Delta.reasoning``, never in ``text``. Tags split
across deltas are held back until they can be told apart from text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from .base import Delta

__all__ = ["CLOSE", "OPEN", "ReasoningSplitter", "split_reasoning"]

OPEN = "<think>"
CLOSE = "</think>"


class ReasoningSplitter:
    """Splits streamed text into (reasoning, answer) pieces; ``opened`` when the prompt opened the block."""

    def __init__(self, *, opened: bool) -> None:
        self._state = "thinking" if opened else "start"
        self._held = ""

    def feed(self, text: str, *, final: bool = False) -> tuple[str, str]:
        held = self._held + text
        self._held = ""
        reasoning: list[str] = []
        answer: list[str] = []
        while held:
            if self._state == "start":
                stripped = held.lstrip()
                if stripped.startswith(OPEN):
                    held = stripped[len(OPEN) :]
                    self._state = "thinking"
                elif OPEN.startswith(stripped) and not final:
                    self._held = held  # could still become "<think>"
                    break
                else:
                    self._state = "answer"
            elif self._state == "thinking":
                at = held.find(CLOSE)
                if at >= 0:
                    reasoning.append(held[:at])
                    held = held[at + len(CLOSE) :].lstrip("\n")
                    self._state = "answer_start"
                    continue
                keep = 0 if final else _partial_suffix(held, CLOSE)
                reasoning.append(held[: len(held) - keep])
                self._held = held[len(held) - keep :]
                break
            elif self._state == "answer_start":
                held = held.lstrip("\n")
                if held:
                    self._state = "answer"
            else:
                answer.append(held)
                break
        return "".join(reasoning), "".join(answer)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


async def split_reasoning(stream: AsyncIterator[Delta], *, opened: bool) -> AsyncIterator[Delta]:
    """The deltas of one choice with their reasoning moved from ``text`` to ``reasoning``."""
    splitter = ReasoningSplitter(opened=opened)
    try:
        async for delta in stream:
            final = delta.finish_reason is not None
            reasoning, text = splitter.feed(delta.text, final=final)
            if not (reasoning or text or final or delta.tool_calls or delta.usage or delta.logprobs):
                continue
            yield replace(delta, text=text, reasoning=delta.reasoning + reasoning)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
