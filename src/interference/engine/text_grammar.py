"""Regular expressions and Lark grammars → GBNF, for text written raw or inside a JSON string.

A custom tool's ``format`` (Responses API: ``{"type": "grammar", "syntax": "lark" | "regex"}``) and a
string's ``pattern`` (JSON Schema) describe text. Inside a tool call the text is a JSON string, so the
grammar can also be written for the text as JSON escapes it: ``"`` → ``\\"``, ``\\`` → ``\\\\``, newline
→ ``\\n`` and the other control characters as ``json.dumps`` writes them (one spelling per character).

Both sources are read as character-level languages (a Lark terminal is its language; Lark's lexer
priorities are not modelled, which only ever accepts more). What cannot be expressed raises
``TextGrammarError``: look-around, back-references, Lark templates and ``%declare``. Case-insensitive
matching folds ASCII letters only, and ``\\d``/``\\w`` mean their ASCII classes.
"""

from __future__ import annotations

import json
import re

# Python's own regular-expression parser is the reference reading of the syntax.
import re._constants as _C  # type: ignore[import-not-found]
import re._parser as _P  # type: ignore[import-not-found]
from dataclasses import dataclass

from .gbnf import class_char, group, literal, repeat

__all__ = ["Node", "TextGrammarError", "emit", "regex_node"]

_MAX_CP = 0x10FFFF
_NEVER = [(0x00, 0x00), (0xD800, 0xDFFF)]  # NUL and UTF-16 surrogates: never text
_JSON_SPECIAL = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]


class TextGrammarError(ValueError):
    """The regular expression or grammar uses something that GBNF cannot express here."""


Ranges = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Node:
    """One term of a text language: ``lit`` (text), ``set`` (code-point ranges), ``seq``/``alt``
    (children), ``rep`` (one child, lo..hi; hi None is unbounded) or ``ref`` (a named rule)."""

    kind: str
    text: str = ""
    ranges: tuple[tuple[int, int], ...] = ()
    children: tuple[Node, ...] = ()
    lo: int = 0
    hi: int | None = None


def lit(text: str) -> Node:
    return Node("lit", text=text)


def seq(children: list[Node]) -> Node:
    return children[0] if len(children) == 1 else Node("seq", children=tuple(children))


def alt(children: list[Node]) -> Node:
    return children[0] if len(children) == 1 else Node("alt", children=tuple(children))


def rep(child: Node, lo: int, hi: int | None) -> Node:
    return Node("rep", children=(child,), lo=lo, hi=hi)


def ref(name: str) -> Node:
    return Node("ref", text=name)


def charset(ranges: Ranges, *, negate: bool = False, fold: bool = False) -> Node:
    merged = _merge(ranges + (_fold(ranges) if fold else []))
    if negate:
        merged = _complement(merged)
    merged = _minus(merged, _NEVER)
    if not merged:
        raise TextGrammarError("a character class that matches nothing")
    return Node("set", ranges=tuple(merged))


def any_char(*, newline: bool) -> Node:
    return charset([] if newline else [(0x0A, 0x0A)], negate=True)


# -- code-point ranges ---------------------------------------------------------------------------------
def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in _merge(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CP:
        out.append((start, _MAX_CP))
    return out


def _minus(ranges: Ranges, removed: Ranges) -> Ranges:
    keep = _complement(removed)
    return _merge([(max(a, c), min(b, d)) for a, b in ranges for c, d in keep if max(a, c) <= min(b, d)])


def _fold(ranges: Ranges) -> Ranges:
    """The other case of the ASCII letters in ``ranges``."""
    out = []
    for lo, hi in ranges:
        for a, b, shift in ((0x41, 0x5A, 32), (0x61, 0x7A, -32)):
            x, y = max(lo, a), min(hi, b)
            if x <= y:
                out.append((x + shift, y + shift))
    return out


def folded_literal(text: str) -> Node:
    parts = [charset([(ord(c), ord(c))], fold=True) if c.isascii() and c.isalpha() else lit(c) for c in text]
    return seq(parts) if parts else lit("")


# -- regular expressions --------------------------------------------------------------------------------
_CATEGORIES: dict[object, tuple[Ranges, bool]] = {
    _C.CATEGORY_DIGIT: (_DIGIT, False),
    _C.CATEGORY_NOT_DIGIT: (_DIGIT, True),
    _C.CATEGORY_WORD: (_WORD, False),
    _C.CATEGORY_NOT_WORD: (_WORD, True),
    _C.CATEGORY_SPACE: (_SPACE, False),
    _C.CATEGORY_NOT_SPACE: (_SPACE, True),
}


def regex_node(pattern: str, *, search: bool = False) -> Node:
    """The language of ``pattern`` (Python syntax) matched whole; ``search``: as JSON Schema's
    ``pattern`` reads it, anywhere in the text unless anchored with ``^``/``$``."""
    try:
        parsed = _P.parse(pattern, 0)
    except re.error as exc:
        raise TextGrammarError(f"invalid regular expression: {exc}") from None
    flags = parsed.state.flags
    items = list(parsed)
    head = bool(items) and items[0] == (_C.AT, _C.AT_BEGINNING)
    tail = len(items) > head and items[-1][0] == _C.AT and items[-1][1] in (_C.AT_END, _C.AT_END_STRING)
    items = items[int(head) : len(items) - int(tail)]
    body = _regex_seq(items, flags)
    if not search:
        return body
    anything = rep(any_char(newline=True), 0, None)
    return seq([*([] if head else [anything]), body, *([] if tail else [anything])])


def _regex_seq(items: list[tuple[object, object]], flags: int) -> Node:
    return seq([_regex_item(op, av, flags) for op, av in items]) if items else lit("")


def _regex_item(op: object, av: object, flags: int) -> Node:
    fold = bool(flags & re.IGNORECASE)
    if op == _C.LITERAL:
        assert isinstance(av, int)
        return folded_literal(chr(av)) if fold else lit(chr(av))
    if op == _C.NOT_LITERAL:
        assert isinstance(av, int)
        return charset([(av, av)], negate=True, fold=fold)
    if op == _C.ANY:
        return any_char(newline=bool(flags & re.DOTALL))
    if op == _C.IN:
        assert isinstance(av, list)
        return _regex_class(av, fold)
    if op == _C.BRANCH:
        assert isinstance(av, tuple)
        return alt([_regex_seq(list(branch), flags) for branch in av[1]])
    if op == _C.SUBPATTERN:
        assert isinstance(av, tuple)
        _group, add, remove, sub = av
        return _regex_seq(list(sub), (flags | add) & ~remove)
    if op in (_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", _C.MAX_REPEAT)):
        assert isinstance(av, tuple)
        lo, hi, sub = av
        return rep(_regex_seq(list(sub), flags), lo, None if hi == _C.MAXREPEAT else hi)
    raise TextGrammarError(f"regular expressions with {str(op).lower()} are not supported")


def _regex_class(items: list[tuple[object, object]], fold: bool) -> Node:
    ranges: Ranges = []
    negate = False
    for op, av in items:
        if op == _C.NEGATE:
            negate = True
        elif op == _C.LITERAL:
            assert isinstance(av, int)
            ranges.append((av, av))
        elif op == _C.RANGE:
            assert isinstance(av, tuple)
            ranges.append((av[0], av[1]))
        elif op == _C.CATEGORY and av in _CATEGORIES:
            cat, inverted = _CATEGORIES[av]
            ranges.extend(_complement(cat) if inverted else cat)
        else:
            raise TextGrammarError(f"character classes with {str(op).lower()} are not supported")
    return charset(ranges, negate=negate, fold=fold)


# -- GBNF -----------------------------------------------------------------------------------------------
def _json_escape(cp: int) -> str:
    return json.dumps(chr(cp), ensure_ascii=False)[1:-1]


def _class(ranges: Ranges) -> str:
    def one(lo: int, hi: int) -> str:
        return class_char(chr(lo)) if lo == hi else f"{class_char(chr(lo))}-{class_char(chr(hi))}"

    return "[" + "".join(one(lo, hi) for lo, hi in ranges) + "]"


def emit(node: Node, *, json_string: bool, names: dict[str, str]) -> str:
    """A GBNF term for ``node``; ``names`` maps rule names to GBNF rule names."""
    if node.kind == "lit":
        text = json.dumps(node.text, ensure_ascii=False)[1:-1] if json_string else node.text
        return literal(text)
    if node.kind == "set":
        ranges = list(node.ranges)
        if not json_string:
            return _class(ranges)
        plain = _minus(ranges, _JSON_SPECIAL)
        escaped = _minus(ranges, _complement(_JSON_SPECIAL))  # at most 34 code points
        special = [cp for lo, hi in escaped for cp in range(lo, hi + 1)]
        alts = ([_class(plain)] if plain else []) + [literal(_json_escape(cp)) for cp in special]
        return group(alts)
    if node.kind == "ref":
        return names[node.text]
    parts = [emit(c, json_string=json_string, names=names) for c in node.children]
    if node.kind == "seq":
        return "(" + " ".join(parts) + ")"
    if node.kind == "alt":
        return "(" + " | ".join(parts) + ")"
    return repeat(parts[0], node.lo, node.hi) or '""'
