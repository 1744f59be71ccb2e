"""Token bytes to text: UTF-8 safe assembly and stop-string matching."""

from __future__ import annotations

import codecs

__all__ = ["IncrementalDetokenizer", "StopMatcher"]


class IncrementalDetokenizer:
    """Turns token pieces (raw bytes, possibly a split UTF-8 sequence) into text."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back text that could begin a stop string; truncates on a full match.

    ``feed`` returns the text that is safe to emit. Once a stop string is found, ``stopped`` is True
    and nothing after it (nor the stop string itself) is ever emitted; ``matched`` is the stop string
    found (the one that starts first).
    """

    __slots__ = ("_pending", "_stops", "matched", "stopped")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        if self.stopped:
            return ""
        pending = self._pending + text
        found = [(i, s) for s in self._stops if (i := pending.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = self._held_length(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Text held back when generation ends without a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _held_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
