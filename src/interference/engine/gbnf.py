"""GBNF building blocks shared by the grammar converters (JSON Schema, regular expressions, Lark).

Terms are GBNF expression strings; each helper returns one that can stand inside a sequence.
"""

from __future__ import annotations

import re

__all__ = ["MAX_REPEAT", "class_char", "group", "integers", "literal", "naturals", "repeat", "seq"]

MAX_REPEAT = 1000  # llama.cpp refuses a minimum repetition count above 2000


_LITERAL_ESCAPES = {i: f"\\x{i:02X}" for i in [*range(0x20), 0x7F]} | {
    ord(c): e for c, e in zip('"\\\n\r\t', ('\\"', "\\\\", "\\n", "\\r", "\\t"), strict=True)
}


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return '"' + text.translate(_LITERAL_ESCAPES) + '"'


def class_char(ch: str) -> str:
    cp = ord(ch)
    return f"\\x{cp:02X}" if cp < 0x100 else f"\\u{cp:04X}" if cp < 0x10000 else f"\\U{cp:08X}"


def seq(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def group(alts: list[str]) -> str:
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def repeat(item: str, lo: int, hi: int | None) -> str:
    """``item`` (already a single GBNF term) repeated lo..hi times (hi None: unbounded)."""
    parts = []
    if lo > MAX_REPEAT:
        q, lo = divmod(lo, MAX_REPEAT)
        parts.append(f"({item}{{{MAX_REPEAT}}}){{{q}}}")
        hi = None if hi is None else hi - q * MAX_REPEAT
    if hi is None:
        parts.append({0: f"{item}*", 1: f"{item}+"}.get(lo, f"{item}{{{lo},}}"))
    elif hi > 0:
        counts = f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
        parts.append(f"{item}?" if (lo, hi) == (0, 1) else item if lo == hi == 1 else item + counts)
    return " ".join(parts)


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching the digit strings of one length from ``lo`` to ``hi``."""
    if lo == hi:
        return [literal(lo)]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    rest = len(lo) - 1
    if lo[0] == hi[0]:
        rest_alts = _same_length(lo[1:], hi[1:])
        if re.fullmatch(r'"[0-9]+"', rest_alts[0]):  # one literal: merge "1" "23" into "123"
            return [literal(lo[0] + rest_alts[0][1:-1])]
        return [f"{literal(lo[0])} {group(rest_alts)}"]
    out = []
    low_full, high_full = lo[1:] == "0" * rest, hi[1:] == "9" * rest
    if not low_full:
        out.append(f"{literal(lo[0])} {group(_same_length(lo[1:], '9' * rest))}")
    first, last = int(lo[0]) + (not low_full), int(hi[0]) - (not high_full)
    if first <= last:
        digit = literal(str(first)) if first == last else f"[{first}-{last}]"
        out.append(f"{digit} {repeat('[0-9]', rest, rest)}")
    if not high_full:
        out.append(f"{literal(hi[0])} {group(_same_length('0' * rest, hi[1:]))}")
    return out


def naturals(lo: int, hi: int | None) -> str:
    """Non-negative integers lo..hi (hi None: unbounded) without leading zeros; assumes lo <= hi."""
    top = hi if hi is not None else 10 ** len(str(lo)) - 1
    alts = []
    for n in range(len(str(lo)), len(str(top)) + 1):
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(top, 10**n - 1)
        alts += _same_length(str(a), str(b))
    if hi is None:
        alts.append(f"[1-9] {repeat('[0-9]', len(str(lo)), None)}")
    return group(alts)


def integers(a: int | None, b: int | None) -> list[str]:
    """Alternatives matching the JSON integers a..b (None: unbounded on that side)."""
    alts = []
    if b is None or b >= 0:
        low = 0 if a is None else max(a, 0)
        if b is None or low <= b:
            alts.append(naturals(low, b))
    if a is None or a < 0:
        low, high = (1 if b is None or b >= 0 else -b), (None if a is None else -a)
        if high is None or low <= high:
            alts.append(f'"-" {naturals(low, high)}')
    if (a is None or a <= 0) and (b is None or b >= 0):
        alts.append('"-0"')  # valid JSON for zero
    return alts
