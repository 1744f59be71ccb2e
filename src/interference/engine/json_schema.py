"""JSON Schema → GBNF, for llama.cpp's grammar sampler (``response_format`` and forced tool calls).

The grammar accepts a subset of the documents that are valid against the schema, and only valid
ones: anything the converter cannot enforce exactly raises ``UnsupportedSchema`` instead of being
dropped (two exceptions: ``oneOf`` is taken as ``anyOf``, so its branches should not overlap,
and ``format: date`` allows February 29 in any year). Deliberate narrowings (all valid JSON):

* objects: properties come in declared order, each at most once; ``additionalProperties`` absent or
  false means no other keys (OpenAI's strict mode); true or a schema allows extra keys (never a
  declared one, and spelled without ``\\u``/``\\/`` escapes until they differ from every declared
  name) after the declared ones. Keys of ``required`` must be declared in ``properties``;
* numbers with bounds are written without an exponent; integers never as ``1.0``;
* whitespace between tokens is limited to nothing, one space, or a newline and 20 indent chars;
* with no ``type``, the types whose keywords appear are used (``properties`` → object, ...),
  and a schema without any is any JSON value;
* strings never escape UTF-16 surrogates (``\\ud83d``): such characters are written as themselves.
"""

from __future__ import annotations

import json
import logging
import math
import re
from fractions import Fraction
from typing import Any

from .gbnf import class_char as _class_char
from .gbnf import group as _group
from .gbnf import integers as _integers
from .gbnf import literal as _lit
from .gbnf import naturals as _naturals
from .gbnf import repeat as _repeat
from .gbnf import seq as _seq

__all__ = ["JSON_OBJECT_GBNF", "UnsupportedSchema", "schema_to_gbnf"]


class UnsupportedSchema(ValueError):
    """The schema uses a keyword (or a value of one) that cannot be enforced by the grammar."""

    def __init__(self, message: str, *, keyword: str, path: str) -> None:
        super().__init__(message)
        self.keyword = keyword
        self.path = path  # dotted location of the schema holding the keyword; "" is the root


logger = logging.getLogger(__name__)


def _bad(keyword: str, path: str, message: str) -> UnsupportedSchema:
    return UnsupportedSchema(message, keyword=keyword, path=path)


# Keywords that never change which documents are valid.
_IGNORED = frozenset(
    {"title", "description", "examples", "default", "$schema", "$id", "$comment", "deprecated",
     "readOnly", "writeOnly", "$defs", "definitions", "contentEncoding", "contentMediaType"}
)  # fmt: skip
_TYPE_KEYWORDS: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties", "unevaluatedProperties"}),
    "array": frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}),
    "string": frozenset({"minLength", "maxLength", "format", "pattern", "x-grammar"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
}
_COMBINATORS = ("$ref", "allOf", "anyOf", "oneOf")
_KNOWN = frozenset({"type", "enum", "const", *_COMBINATORS}).union(*_TYPE_KEYWORDS.values())
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# No escaped UTF-16 surrogates: a pair would be one character to JSON but two to the grammar.
_HEX = "[0-9a-fA-F]"
_UNICODE = f"([0-9a-cA-Ce-fE-F] {_HEX}{{3}} | [dD] [0-7] {_HEX}{{2}})"
_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ' + _UNICODE + ")"
_INT = '("0" | [1-9] [0-9]*)'
_FRACTION = '"." "0"* [1-9] [0-9]*'  # a fraction that is not zero
_PRIMITIVES: dict[str, str] = {
    "space": r'| " " | "\n" [ \t]{0,20}',
    "char": _CHAR,
    "string": r'"\"" char* "\"" space',
    "number": f'"-"? {_INT} ("." [0-9]+)? ([eE] [-+]? [0-9]+)? space',
    "integer": f'"-"? {_INT} space',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space (string ":" space value ("," space string ":" space value)*)? "}" space',
    "array": '"[" space (value ("," space value)*)? "]" space',
}
_HOUR = '([01] [0-9] | "2" [0-3])'
_DAY = '("0" [1-9] | [12] [0-9]'  # the last days of each month are added below
_MONTH_DAY = f'("0" [13578] | "1" [02]) "-" {_DAY} | "3" [01]) | ("0" [469] | "11") "-" {_DAY} | "30")'
_DATE = f'[0-9]{{4}} "-" ({_MONTH_DAY} | "02-" {_DAY}))'
_TIME = f'{_HOUR} ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]+)? ("Z" | ("+" | "-") {_HOUR} ":" [0-5] [0-9])'
_UUID = ' "-" '.join(f"{_HEX}{{{n}}}" for n in (8, 4, 4, 4, 12))
_FORMATS = {"date": _DATE, "time": _TIME, "date-time": f'{_DATE} "T" {_TIME}', "uuid": _UUID}
_NAME = re.compile(r"[a-zA-Z0-9-]+")


class _Converter:
    def __init__(self, root: dict[str, Any], name: str, reserved: frozenset[str]) -> None:
        self.root = root
        self.rules: dict[str, str] = {name: ""}
        self.reserved = reserved | {"root", name}
        self.by_body: dict[str, str] = {}
        self.refs: dict[str, str] = {"#": name}

    # -- rules -------------------------------------------------------------------------------------
    def _fresh(self, hint: str) -> str:
        base = "-".join(_NAME.findall(hint.replace("properties.", "")))[-40:].strip("-") or "doc"
        if base in _PRIMITIVES or base in self.reserved:
            base += "-"
        name, i = base, 1
        while name in self.rules:
            i += 1
            name = f"{base}{i}" if base.endswith("-") else f"{base}-{i}"
        return name

    def rule(self, hint: str, body: str) -> str:
        if _NAME.fullmatch(body) and body in self.rules:
            return body
        if body not in self.by_body:
            self.by_body[body] = name = self._fresh(hint)
            self.rules[name] = body
        return self.by_body[body]

    def prim(self, name: str) -> str:
        if name not in self.rules:
            body = self.rules[name] = _PRIMITIVES[name]
            for dep in re.findall(r"[a-z]+", re.sub(r'"(\\.|[^"\\])*"|\[(\\.|[^\]\\])*\]', " ", body)):
                self.prim(dep)
        return name

    # -- schemas -----------------------------------------------------------------------------------
    def visit(self, schema: Any, path: str) -> str:
        """A GBNF term matching a JSON value valid against ``schema``, plus trailing whitespace."""
        if schema is True:
            return self.prim("value")
        if not isinstance(schema, dict):
            bad = "false" if schema is False else "schema"
            raise _bad(bad, path, f"expected a schema object, got {schema!r}")
        for key in schema:
            if key not in _KNOWN and key not in _IGNORED:
                raise _bad(key, path, f"keyword {key!r} is not supported")
        checked = [k for k in schema if k not in _IGNORED]
        for key in (*_COMBINATORS, "const", "enum"):
            if key in schema:
                others = [k for k in checked if k != key and not (key in ("const", "enum") and k == "type")]
                if others:
                    raise _bad(others[0], path, f"{key!r} cannot be combined with {others[0]!r}")
                return self._combinator(key, schema, path)
        types = _types(schema, path)
        if types is None:
            found = {t for t, keys in _TYPE_KEYWORDS.items() if keys & schema.keys()}
            types = [t for t in _TYPES if t in found]
            if not types:
                return self.prim("value")
        if "number" in types:
            types = [t for t in types if t != "integer"]
        alts = [self._typed(t, schema, path) for t in dict.fromkeys(types)]
        return alts[0] if len(alts) == 1 else self.rule(path, " | ".join(alts))

    def _combinator(self, key: str, schema: dict[str, Any], path: str) -> str:
        value = schema[key]
        if key == "$ref":
            return self._ref(value, path)
        if key in ("const", "enum"):
            values = [value] if key == "const" else value
            if not isinstance(values, list):
                raise _bad(key, path, "enum must be a list")
            types = _types(schema, path)
            if types is not None:
                values = [v for v in values if any(_is_type(v, t) for t in types)]
            if not values:
                raise _bad(key, path, f"{key} leaves no possible value")
            text = [_lit(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in values]
            return self.rule(path, f"{_group(list(dict.fromkeys(text)))} {self.prim('space')}")
        if not isinstance(value, list) or not value or (key == "allOf" and len(value) != 1):
            what = "a list of exactly one schema" if key == "allOf" else "a non-empty list"
            raise _bad(key, path, f"{key} must be {what}")
        alts = [self.visit(sub, f"{path}.{key}.{i}".lstrip(".")) for i, sub in enumerate(value)]
        return self.rule(path, " | ".join(dict.fromkeys(alts)))

    def _ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _bad("$ref", path, f"only local references are supported: {ref!r}")
        if ref in self.refs:
            return self.refs[ref]
        target: Any = self.root
        parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/")[1:]]
        for part in parts:
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise _bad("$ref", path, f"unresolvable reference {ref!r}")
        name = self.refs[ref] = self._fresh("-".join(parts[-1:]))
        self.rules[name] = "?"  # reserved: the target may refer back to itself
        self.rules[name] = self.visit(target, ".".join(parts))
        return name

    def _typed(self, kind: str, schema: dict[str, Any], path: str) -> str:
        if kind in ("number", "integer"):
            return self._number(schema, path, integer=kind == "integer")
        build = {"object": self._object, "array": self._array, "string": self._string}.get(kind)
        return build(schema, path) if build else self.prim(kind)

    def _object(self, schema: dict[str, Any], path: str) -> str:
        props, required = schema.get("properties", {}), schema.get("required", [])
        extra_schema = schema.get("additionalProperties", False)
        if not isinstance(props, dict):
            raise _bad("properties", path, "properties must be an object")
        if not isinstance(required, list) or any(r not in props for r in required):
            raise _bad("required", path, "every required key must be listed in properties")
        if schema.get("unevaluatedProperties", False) is not False:
            raise _bad("unevaluatedProperties", path, "only unevaluatedProperties: false is supported")
        sp = self.prim("space")
        kvs, needed = [], []
        for name, sub in props.items():
            value = self.visit(sub, f"{path}.properties.{name}".lstrip("."))
            key = _lit(json.dumps(name, ensure_ascii=False))
            kvs.append(self.rule(f"{path}.{name}-kv", f'{key} {sp} ":" {sp} {value}'))
            needed.append(name in required)
        extra = None
        if extra_schema is not False:
            value = self.visit(extra_schema, f"{path}.additionalProperties".lstrip("."))
            key = self._other_key(list(props), path) if props else self.prim("string")
            extra = self.rule(f"{path}-extra-kv", f'{key} ":" {sp} {value}')
        more = f'("," {sp} {extra})*' if extra else ""
        if any(needed):
            first = needed.index(True)
            parts = [f'({kv} "," {sp})?' for kv in kvs[:first]] + [kvs[first]]
            for kv, req in zip(kvs[first + 1 :], needed[first + 1 :], strict=True):
                parts.append(f'"," {sp} {kv}' if req else f'("," {sp} {kv})?')
            inner = _seq(*parts, more)
        else:
            alts = [_seq(extra, more)] if extra else []
            if kvs:  # from_i: kv_i then any of the later ones, or nothing before from_(i+1)
                tail, start = "", kvs[-1]
                for i in range(len(kvs) - 2, -1, -1):
                    tail = self.rule(f"{path}-tail", _seq(f'("," {sp} {kvs[i + 1]})?', tail))
                    start = self.rule(f"{path}-from", f"{kvs[i]} {tail} | {start}")
                alts.insert(0, _seq(start, more))
            inner = f"({' | '.join(alts)})?" if alts else ""
        return self.rule(path, _seq('"{"', sp, inner, '"}"', sp))

    def _other_key(self, names: list[str], path: str) -> str:
        """A JSON string (plus whitespace) that is not one of ``names``, built on their trie.

        Until it leaves the trie the key may not use the escapes that could spell a plain character
        (``\\u``, ``\\/``); the others spell characters that no name holds.
        """
        if any(c in '"\\' or ord(c) < 0x20 for n in names for c in n):
            raise _bad("additionalProperties", path, "extra keys beside names that need escapes")
        self.prim("char")
        sp = self.prim("space")
        free = self.rule(f"{path}-key-free", f'char* "\\"" {sp}')

        def node(prefix: str) -> str:
            nexts = sorted({n[len(prefix)] for n in names if len(n) > len(prefix) and n.startswith(prefix)})
            excluded = "".join(_class_char(c) for c in nexts)
            alts = [f'[^"\\\\\\x00-\\x1F{excluded}] {free}', f'"\\\\" ["\\\\bfnrt] {free}']
            if prefix not in names:
                alts.insert(0, f'"\\"" {sp}')
            alts += [f"{_lit(c)} {node(prefix + c)}" for c in nexts]
            return self.rule(f"{path}-key", " | ".join(alts))

        return f'"\\"" {node("")}'

    def _array(self, schema: dict[str, Any], path: str) -> str:
        items, prefix = schema.get("items", True), schema.get("prefixItems", [])
        if isinstance(items, list):  # the draft-7 tuple form
            if "prefixItems" in schema:
                raise _bad("items", path, "items as a list with prefixItems")
            items, prefix = schema.get("additionalItems", True), items
        elif "additionalItems" in schema:
            raise _bad("additionalItems", path, "additionalItems needs items as a list")
        if schema.get("uniqueItems", False) is not False:
            raise _bad("uniqueItems", path, "uniqueItems is not supported")
        if not isinstance(prefix, list):
            raise _bad("prefixItems", path, "prefixItems must be a list")
        low, high = _count(schema, "minItems", path) or 0, _count(schema, "maxItems", path)
        if items is False:
            high = len(prefix) if high is None else min(high, len(prefix))
        if high is not None and low > high:
            raise _bad("minItems", path, "no array length satisfies the limits")
        sp = self.prim("space")
        prefix = prefix if high is None else prefix[:high]
        terms = [self.visit(s, f"{path}.prefixItems.{i}".lstrip(".")) for i, s in enumerate(prefix)]
        inner = ""
        more_low, more_high = max(0, low - len(terms)), None if high is None else high - len(terms)
        if more_high != 0:
            item = self.visit(items, f"{path}.items".lstrip("."))
            if terms:
                inner = _repeat(f'("," {sp} {item})', more_low, more_high)
            else:
                rest = _repeat(f'("," {sp} {item})', max(0, low - 1), None if high is None else high - 1)
                inner = _seq(item, rest) if low else f"({_seq(item, rest)})?"
        for i in range(len(terms) - 1, -1, -1):
            seq = _seq("" if i == 0 else f'"," {sp}', terms[i], inner)
            inner = seq if i < low else f"({seq})?"
        return self.rule(path, _seq('"["', sp, inner, '"]"', sp))

    def _string(self, schema: dict[str, Any], path: str) -> str:
        low, high = _count(schema, "minLength", path) or 0, _count(schema, "maxLength", path)
        fmt = schema.get("format")
        text = self._text(schema, path)
        if text is not None:
            for kw in ("format", "minLength", "maxLength"):
                if kw in schema:
                    raise _bad(kw, path, f"{kw} beside a pattern or grammar")
            return self.rule(path, _seq('"\\""', text, '"\\""', self.prim("space")))
        if fmt is not None:
            if fmt not in _FORMATS:
                raise _bad("format", path, f"format {fmt!r} is not supported")
            if low or high is not None:
                kw = "minLength" if low else "maxLength"
                raise _bad(kw, path, "format with length limits")
            return self.rule(f"{path}-{fmt}", f'"\\"" {_FORMATS[fmt]} "\\"" {self.prim("space")}')
        if high is not None and low > high:
            raise _bad("minLength", path, "minLength is above maxLength")
        if not low and high is None:
            return self.prim("string")
        chars = _repeat(self.prim("char"), low, high)
        return self.rule(path, _seq('"\\""', chars, '"\\""', self.prim("space")))

    def _text(self, schema: dict[str, Any], path: str) -> str | None:
        """A term for the inside of a string whose text follows ``pattern`` (a regular expression,
        found anywhere unless anchored) or ``x-grammar`` (``{"syntax": "lark" | "regex",
        "definition": ...}``, a custom tool's format: one it cannot read is left unenforced)."""
        from .lark_grammar import text_rules
        from .text_grammar import TextGrammarError

        def reserve(hint: str) -> str:
            name = self._fresh(f"{path}-{hint}")
            self.rules[name] = "?"
            return name

        pattern, grammar = schema.get("pattern"), schema.get("x-grammar")
        if pattern is not None and grammar is not None:
            raise _bad("pattern", path, "pattern beside x-grammar")
        try:
            if pattern is not None:
                if not isinstance(pattern, str):
                    raise _bad("pattern", path, "pattern must be a string")
                start, rules = text_rules("pattern", pattern, json_string=True, reserve=reserve)
            elif isinstance(grammar, dict):
                syntax, definition = grammar.get("syntax"), grammar.get("definition")
                start, rules = text_rules(str(syntax), str(definition), json_string=True, reserve=reserve)
            else:
                return None
        except TextGrammarError as exc:
            if pattern is not None:
                raise _bad("pattern", path, str(exc)) from None
            logger.warning("a custom tool's grammar is not enforced: %s", exc)
            return None
        self.rules.update(rules)
        return start

    def _number(self, schema: dict[str, Any], path: str, *, integer: bool) -> str:
        lo, lo_open, lo_kw = _bound(schema, "minimum", "exclusiveMinimum", True, path)
        hi, hi_open, hi_kw = _bound(schema, "maximum", "exclusiveMaximum", False, path)
        if lo is None and hi is None:
            return self.prim("integer" if integer else "number")
        if not integer:
            for value, kw in ((lo, lo_kw), (hi, hi_kw)):
                if value is not None and value.denominator != 1:
                    raise _bad(kw, path, "number bounds must be integers")
        a = None if lo is None else (math.floor(lo) + 1 if lo_open else math.ceil(lo))
        b = None if hi is None else (math.ceil(hi) - 1 if hi_open else math.floor(hi))
        alts = _integers(a, b) if a is None or b is None or a <= b else []
        if alts and not integer:
            alts = [f'{_group(alts)} ("." "0"+)?']
        if not integer:  # non-integers x with floor(x) in [lo, hi - 1]: bounds' openness is moot
            low, high = (0 if lo is None else max(int(lo), 0)), (None if hi is None else int(hi) - 1)
            if high is None or low <= high:
                alts.append(f"{_naturals(low, high)} {_FRACTION}")
            low, high = (0 if hi is None else max(0, -int(hi))), (None if lo is None else -int(lo) - 1)
            if high is None or low <= high:
                alts.append(f'"-" {_naturals(low, high)} {_FRACTION}')
        if not alts:
            raise _bad(lo_kw or hi_kw, path, "no number satisfies the bounds")
        return self.rule(path, f"{_group(alts)} {self.prim('space')}")


def _types(schema: dict[str, Any], path: str) -> list[str] | None:
    """The validated ``type`` keyword as a list; None when absent."""
    types = schema.get("type")
    if types is None:
        return None
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or not types or any(t not in _TYPES for t in types):
        raise _bad("type", path, f"unknown type {schema['type']!r}")
    return types


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return kind == "number" or isinstance(value, int) or value.is_integer()
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return kind in kinds and isinstance(value, kinds[kind])


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise _bad(key, path, f"{key} must be a non-negative integer")
    return value


def _bound(
    schema: dict[str, Any], inclusive: str, exclusive: str, lower: bool, path: str
) -> tuple[Fraction | None, bool, str]:
    """(value, open, keyword) of the tighter of ``inclusive`` and ``exclusive``; draft-4 booleans too."""
    found: list[tuple[Fraction, bool, str]] = []
    for key in (inclusive, exclusive):
        value = schema.get(key)
        if value is None or (key == exclusive and isinstance(value, bool)):
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise _bad(key, path, f"{key} must be a number")
        found.append((Fraction(value), key == exclusive or schema.get(exclusive) is True, key))
    if not found:
        return None, False, ""
    # The tighter bound: the larger lower one (the smaller upper one); at equal values the open one.
    value, is_open, key = max(found, key=lambda f: (f[0] if lower else -f[0], f[1]))
    return value, is_open, key


def schema_to_gbnf(
    schema: dict[str, Any], *, root: str = "root", reserved: frozenset[str] = frozenset()
) -> str:
    """A GBNF grammar for the JSON documents valid against ``schema``, whose rule ``root`` matches a
    document; no other rule is named ``root`` or one of ``reserved`` (so rules may be added)."""
    conv = _Converter(schema, root, reserved)
    conv.rules[root] = conv.visit(schema, "")
    return "".join(f"{name} ::= {body}\n" for name, body in conv.rules.items())


JSON_OBJECT_GBNF: str = schema_to_gbnf({"type": "object", "additionalProperties": True})
