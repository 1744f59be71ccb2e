"""Lark grammars (the ``lark`` syntax of a custom tool's format) read into text-language terms, and
the one entry point that turns a ``lark`` or ``regex`` definition into GBNF rules.

Read: rules and terminals (``?``/``!`` marks and priorities are accepted and change nothing), string
literals (``"..."i`` too), ``/regex/flags``, ranges ``"a".."z"``, ``| ( ) [ ] ? * + ~ n(..m)``, aliases
``-> name``, ``%import common.NAME`` (with ``-> ALIAS``, or a parenthesised list) and ``%ignore``,
which lets the ignored text stand between the items of a rule. ``start`` is the root.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .text_grammar import (
    Node,
    TextGrammarError,
    alt,
    charset,
    emit,
    folded_literal,
    lit,
    ref,
    regex_node,
    rep,
    seq,
)

__all__ = ["LarkReader", "text_rules"]

_TOKEN = re.compile(
    r"""(?P<skip>[ \t\f\r]+|//[^\n]*|\\\n)
    |(?P<nl>\n)
    |(?P<string>"(?:\\.|[^"\\\n])*"i?)
    |(?P<regex>/(?:\\.|[^/\\\n])+/[imslux]*)
    |(?P<op>->|\.\.|[:|()\[\]?*+~%,.!])
    |(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)
    |(?P<number>\d+)""",
    re.X,
)
_IGNORED = "__ignored"
_GAP = rep(ref(_IGNORED), 0, None)  # where %ignore'd text may stand
COMMON = r"""
DIGIT: "0".."9"
HEXDIGIT: "a".."f" | "A".."F" | DIGIT
INT: DIGIT+
SIGNED_INT: ["+" | "-"] INT
DECIMAL: INT "." INT? | "." INT
_EXP: ("e" | "E") SIGNED_INT
FLOAT: INT _EXP | DECIMAL _EXP?
SIGNED_FLOAT: ["+" | "-"] FLOAT
NUMBER: FLOAT | INT
SIGNED_NUMBER: ["+" | "-"] NUMBER
ESCAPED_STRING: "\"" /([^"\\\n]|\\[^\n])*/ "\""
LCASE_LETTER: "a".."z"
UCASE_LETTER: "A".."Z"
LETTER: UCASE_LETTER | LCASE_LETTER
WORD: LETTER+
CNAME: ("_" | LETTER) ("_" | LETTER | DIGIT)*
WS_INLINE: (" " | /\t/)+
WS: /[ \t\f\r\n]/+
CR: /\r/
LF: /\n/
NEWLINE: (CR? LF)+
SH_COMMENT: /#[^\n]*/
CPP_COMMENT: /\/\/[^\n]*/
C_COMMENT: "/*" /(.|\n)*/ "*/"
SQL_COMMENT: /--[^\n]*/
"""

Token = tuple[str, str]
_STOPS = (("op", "|"), ("op", ")"), ("op", "]"), ("op", "->"))


def _tokens(text: str) -> list[list[Token]]:
    """The definition's tokens, line by line."""
    lines: list[list[Token]] = [[]]
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise TextGrammarError(f"lark grammar: cannot read {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "nl":
            lines.append([])
        elif kind != "skip":
            lines[-1].append((kind, m.group()))
    return [line for line in lines if line]


def _starts_statement(line: list[Token]) -> bool:
    i = 1 if line[0] in (("op", "?"), ("op", "!")) else 0
    if line[0] == ("op", "%"):
        return True
    if i >= len(line) or line[i][0] != "name":
        return False
    i += 1
    if i + 1 < len(line) and line[i] == ("op", ".") and line[i + 1][0] == "number":
        i += 2
    return i < len(line) and line[i] == ("op", ":")


def _is_terminal(name: str) -> bool:
    return name.lstrip("_")[:1].isupper()


class LarkReader:
    """Reads a Lark grammar; ``rules`` holds what ``start`` reaches, ``start`` names the root."""

    def __init__(self, definition: str, *, common: bool = True) -> None:
        self.defined: dict[str, Node] = {}
        self.ignored: list[Node] = []
        self.common = _common() if common else None
        statements: list[list[Token]] = []
        for line in _tokens(definition):
            if _starts_statement(line) or not statements:
                statements.append(list(line))
            else:
                statements[-1].extend(line)
        for statement in statements:
            self._statement(statement)
        if common:
            self._finish()

    # -- statements ---------------------------------------------------------------------------------
    def _statement(self, toks: list[Token]) -> None:
        if toks[0] == ("op", "%"):
            self._directive(toks[1:])
            return
        i = 1 if toks[0][0] == "op" else 0
        name = toks[i][1]
        i += 1
        if toks[i] == ("op", "."):
            i += 2
        if toks[i] != ("op", ":"):
            raise TextGrammarError(f"lark grammar: expected ':' after {name}")
        parser = _Parser(toks[i + 1 :], in_rule=not _is_terminal(name))
        self.defined[name] = parser.expansions()
        parser.end()

    def _directive(self, toks: list[Token]) -> None:
        word = toks[0][1] if toks else ""
        if word == "ignore":
            parser = _Parser(toks[1:], in_rule=False)
            self.ignored.append(parser.expansions())
            parser.end()
        elif word == "import":
            self._import(toks[1:])
        else:
            raise TextGrammarError(f"lark grammar: %{word} is not supported")

    def _import(self, toks: list[Token]) -> None:
        if not toks or toks[0] != ("name", "common") or self.common is None:
            raise TextGrammarError("lark grammar: only %import common is supported")
        rest = toks[1:]
        pairs: list[tuple[str, str]] = []
        if rest[:1] == [("op", ".")] and len(rest) >= 2:
            name = rest[1][1]
            alias = rest[3][1] if len(rest) >= 4 and rest[2] == ("op", "->") else name
            pairs.append((name, alias))
        elif rest[:1] == [("op", "(")]:
            pairs += [(t[1], t[1]) for t in rest[1:] if t[0] == "name"]
        for name, alias in pairs:
            if name not in self.common:
                raise TextGrammarError(f"lark grammar: common.{name} is not known")
            for dep, body in self.common.items():
                self.defined.setdefault(dep if dep != name else alias, body)

    def _finish(self) -> None:
        if "start" not in self.defined:
            raise TextGrammarError("lark grammar: no 'start' rule")
        if self.ignored:
            self.defined[_IGNORED] = alt(self.ignored)
            gap = rep(ref(_IGNORED), 0, None)
            self.defined["start"] = seq([gap, self.defined["start"], gap])
        else:
            self.defined = {name: _without_gaps(body) for name, body in self.defined.items()}
        self.rules: dict[str, Node] = {}
        todo = ["start"]
        while todo:
            name = todo.pop()
            if name in self.rules:
                continue
            if name not in self.defined:
                raise TextGrammarError(f"lark grammar: '{name}' is used but not defined")
            self.rules[name] = body = self.defined[name]
            todo += _refs(body)
        self.start = "start"


def _without_gaps(node: Node) -> Node:
    if node.kind in ("lit", "set", "ref"):
        return node
    children = [_without_gaps(c) for c in node.children if c != _GAP]
    if node.kind == "seq":
        return seq(children)
    return alt(children) if node.kind == "alt" else rep(children[0], node.lo, node.hi)


@functools.cache
def _common() -> Mapping[str, Node]:
    """Lark's ``common`` terminals, read once (every custom tool of Codex imports them each turn)."""
    return MappingProxyType(LarkReader(COMMON, common=False).defined)


def _refs(node: Node) -> list[str]:
    if node.kind == "ref":
        return [node.text]
    return [name for child in node.children for name in _refs(child)]


class _Parser:
    """Recursive descent over one definition's expansions."""

    def __init__(self, toks: list[Token], *, in_rule: bool) -> None:
        self.toks, self.i, self.in_rule = toks, 0, in_rule

    def peek(self) -> Token:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def end(self) -> None:
        if self.peek()[0] != "end":
            raise TextGrammarError(f"lark grammar: unexpected {self.peek()[1]!r}")

    def expansions(self) -> Node:
        alts = [self.alias()]
        while self.peek() == ("op", "|"):
            self.take()
            alts.append(self.alias())
        return alt(alts)

    def alias(self) -> Node:
        items: list[Node] = []
        while self.peek() not in _STOPS and self.peek()[0] != "end":
            if items and self.in_rule:
                items.append(_GAP)
            items.append(self.expr())
        if self.peek() == ("op", "->"):
            self.take()
            self.take()
        return seq(items) if items else lit("")

    def expr(self) -> Node:
        node = self.atom()
        while True:
            tok = self.peek()
            if tok in (("op", "?"), ("op", "*"), ("op", "+")):
                self.take()
                node = rep(node, 1 if tok[1] == "+" else 0, 1 if tok[1] == "?" else None)
            elif tok == ("op", "~"):
                self.take()
                lo = hi = self.number()
                if self.peek() == ("op", ".."):
                    self.take()
                    hi = self.number()
                node = rep(node, lo, hi)
            else:
                return node

    def number(self) -> int:
        kind, text = self.take()
        if kind != "number":
            raise TextGrammarError(f"lark grammar: expected a number, got {text!r}")
        return int(text)

    def atom(self) -> Node:
        kind, text = self.take()
        if (kind, text) in (("op", "("), ("op", "[")):
            inner = self.expansions()
            if self.take() != ("op", ")" if text == "(" else "]"):
                raise TextGrammarError("lark grammar: unbalanced brackets")
            return inner if text == "(" else rep(inner, 0, 1)
        if kind == "string":
            value, folded = _string(text)
            if self.peek() == ("op", ".."):
                self.take()
                kind2, text2 = self.take()
                high, _ = _string(text2) if kind2 == "string" else ("", False)
                if len(value) != 1 or len(high) != 1:
                    raise TextGrammarError("lark grammar: a range needs two one-character strings")
                return charset([(ord(value), ord(high))])
            return folded_literal(value) if folded else lit(value)
        if kind == "regex":
            body, flags = text[1:].rsplit("/", 1)
            inline = "".join(f for f in flags if f in "imsx")
            return regex_node((f"(?{inline})" if inline else "") + body.replace("\\/", "/"))
        if kind == "name":
            return ref(text)
        raise TextGrammarError(f"lark grammar: unexpected {text!r}")


def _string(token: str) -> tuple[str, bool]:
    folded = token.endswith("i")
    try:
        value = ast.literal_eval(token[:-1] if folded else token)
    except (ValueError, SyntaxError):
        raise TextGrammarError(f"lark grammar: bad string {token}") from None
    assert isinstance(value, str)
    return value, folded


def text_rules(
    syntax: str, definition: str, *, json_string: bool, reserve: Callable[[str], str]
) -> tuple[str, dict[str, str]]:
    """(start term, rules) of GBNF for a ``regex`` or ``lark`` definition, for the text as written or
    (``json_string``) as the inside of a JSON string. ``reserve(hint)`` gives a fresh rule name."""
    if syntax in ("regex", "pattern"):  # "pattern": JSON Schema's reading, found anywhere unless anchored
        node, rules = regex_node(definition, search=syntax == "pattern"), {}
    elif syntax == "lark":
        reader = LarkReader(definition)
        node, rules = ref(reader.start), reader.rules
    else:
        raise TextGrammarError(f"grammar syntax {syntax!r} is not supported (lark or regex)")
    names = {name: reserve(name.lower().replace("_", "-").strip("-") or "text") for name in rules}
    out = {names[name]: emit(body, json_string=json_string, names=names) for name, body in rules.items()}
    return emit(node, json_string=json_string, names=names), out
