"""JSON Schema → GBNF: the grammars parse in llama.cpp and accept exactly the valid documents.

Acceptance is decided by llama.cpp's own grammar sampler: the text is tokenized with the embedded
model's vocabulary and fed token by token; a token masked to -inf, or end-of-stream masked at the
end, means the grammar rejects the text. Expectations come from ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import jsonschema
import pytest
from grammar_check import Grammars

from interference.engine.json_schema import JSON_OBJECT_GBNF, UnsupportedSchema, schema_to_gbnf


def obj(props: dict[str, Any], required: list[str] | None = None, **more: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "additionalProperties": False, **more}
    if required is not None:
        schema["required"] = required
    return schema


PERSON = obj(
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "address": obj({"city": {"type": "string"}, "zip": {"type": "string", "maxLength": 5}}, ["city"]),
    },
    ["name", "age"],
)
DEFS = {
    "$defs": {
        "node": obj(
            {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            ["value"],
        ),
        "point": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {"tree": {"$ref": "#/$defs/node"}, "at": {"$ref": "#/definitions/point"}},
    "definitions": {"point": {"allOf": [{"$ref": "#/$defs/point"}], "description": "a point"}},
    "required": ["tree"],
    "additionalProperties": False,
}


# (schema, valid documents, invalid documents); a str is raw text, anything else goes through json.dumps.
def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema)


def pat(pattern: str) -> dict[str, Any]:
    return obj({"s": {"type": "string", "pattern": pattern}}, ["s"])


CASES: list[tuple[str, dict[str, Any], list[Any], list[Any]]] = [
    (
        "person",
        PERSON,
        [
            {"name": "Ann", "age": 30},
            {"name": "Bob", "age": 0, "email": None, "tags": ["a", "c"]},
            {"name": 'ab"\\\n', "age": 150, "address": {"city": "Oslo", "zip": "0150"}},
            {"name": "Zoë", "age": 7, "email": "z@x", "tags": ["b"], "address": {"city": ""}},
            '{"name":"Ann","age":3}',
            '{\n  "name": "Ann",\n  "age": 3\n}\n',
        ],
        [
            {"age": 30},
            {"name": "Ann"},
            {"name": "", "age": 1},
            {"name": "123456789", "age": 1},
            {"name": "Ann", "age": 151},
            {"name": "Ann", "age": -1},
            {"name": "Ann", "age": 3, "x": 1},
            {"name": "Ann", "age": 3, "tags": []},
            {"name": "Ann", "age": 3, "tags": ["d"]},
            {"name": "Ann", "age": 3, "tags": ["a", "b", "c", "a"]},
            {"name": "Ann", "age": 3.5},
            {"name": "Ann", "age": 3, "address": {"zip": "1"}},
            {"name": "A", "age": 1, "email": 5},
            {"name": "A", "age": 1, "address": {"city": "x", "zip": "123456"}},
            '{"name":"A","age":007}',
            '{"name":"A\x01","age":1}',
            '{"name":"A","age":1}}',
            '{"name":"A","age":1',
        ],
    ),
    (
        "integer 7..1234",
        {"type": "integer", "minimum": 7, "maximum": 1234},
        [7, 8, 9, 10, 99, 100, 999, 1000, 1199, 1229, 1234],
        [6, 0, -7, 1235, 1240, 1300, 2000, 9999, 12340],
    ),
    (
        "integer -50..50",
        {"type": "integer", "minimum": -50, "maximum": 50},
        [-50, -49, -10, -9, -1, 0, "-0", 1, 9, 10, 45, 50],
        [-51, -60, -100, 51, 60, 500, "01", "-00"],
    ),
    (
        "integer exclusive",
        {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 100},
        [-2, 0, 99],
        [-3, -4, 100, 101],
    ),
    ("integer fractional bounds", {"type": "integer", "minimum": 1.5, "maximum": 3.5}, [2, 3], [1, 4, 2.5]),
    ("integer one-sided", {"type": "integer", "minimum": 95}, [95, 99, 100, 123456789], [94, 9, 0, -95]),
    ("integer below", {"type": "integer", "maximum": -12}, [-12, -13, -99, -100, -987654], [-11, -1, 0, 12]),
    (
        "number 0..1",
        {"type": "number", "minimum": 0, "maximum": 1},
        [0, 1, 0.5, 0.001, 0.999, "1.0", "1.000", "0.0"],
        [1.5, 1.001, -0.1, -1, 2, "01.5", "1.", ".5"],
    ),
    (
        "number -90..90",
        {"type": "number", "minimum": -90, "maximum": 90},
        [-90, -89.99, -0.5, 0, "-0.0", 12.25, 89.5, 90, "90.00", "-90.0"],
        [-90.01, -91, 90.5, 91, 100, -100.5],
    ),
    (
        "number open",
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
        [0.001, 1, 99, 99.99],
        [0, "0.0", 100, "100.0", -5, 100.5],
    ),
    (
        "pattern anchored",
        pat("^[0-9]{5}$"),
        [{"s": "12345"}],
        [{"s": "1234"}, {"s": "123456"}, {"s": "1234a"}],
    ),
    (
        "pattern found anywhere",
        pat("ab+c"),
        [{"s": "abc"}, {"s": "xxabbbc\n"}, {"s": 'a"abc\\'}],
        [{"s": "ac"}],
    ),
    ("pattern left-anchored", pat("^Q[a-z]*"), [{"s": "Q"}, {"s": "Qabc1"}], [{"s": "aQ"}, {"s": "q"}]),
    ("pattern escapes", pat("^[\\s\\S]{1,3}$"), [{"s": '"'}, {"s": "\\\n"}, {"s": "\t\u0001"}], [{"s": ""}]),
    (
        "pattern case-folded",
        pat("(?i)^(yes|no)$"),
        [{"s": "YES"}, {"s": "yEs"}, {"s": "no"}],
        [{"s": "yess"}],
    ),
    ("number free", {"type": "number"}, [0, -1.5, 1e21, "2E-3", "-0"], ["+1", "1.", "0x1", "NaN"]),
    (
        "strings",
        obj({"s": {"type": "string", "minLength": 2, "maxLength": 4}}, ["s"]),
        [{"s": "ab"}, {"s": "abcd"}, {"s": "é€😀"}, {"s": '\\"\t'}, '{"s":"\\u00e9x"}'],
        [{"s": "a"}, {"s": "abcde"}, {"s": ""}, {"s": 12}, '{"s":"\\q1"}', '{"s":"\\ud83d\\ude00"}'],
    ),
    (
        "enum const",
        obj({"e": {"enum": ["red", 2, None, True, [1, "x"], {"k": 1}]}, "c": {"const": "fixed"}}, ["e", "c"]),
        [
            {"e": "red", "c": "fixed"},
            {"e": 2, "c": "fixed"},
            {"e": None, "c": "fixed"},
            {"e": True, "c": "fixed"},
            '{"e":[1,"x"],"c":"fixed"}',
            '{"e":{"k":1},"c":"fixed"}',
        ],
        [{"e": "blue", "c": "fixed"}, {"e": 3, "c": "fixed"}, {"e": "red", "c": "other"}, {"e": "red"}],
    ),
    (
        "anyOf",
        {
            "anyOf": [
                {"type": "integer", "minimum": 10},
                obj({"a": {"type": "boolean"}}, ["a"]),
                {"type": "null"},
            ]
        },
        [10, 1000, {"a": False}, None],
        [9, {"a": 1}, {}, "x", True],
    ),
    (
        "optional only",
        obj({"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}}),
        [{}, {"a": 1}, {"b": 1}, {"c": 1}, {"a": 1, "c": 3}, {"b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}],
        [{"d": 1}, '{"a":1,}', '{,"a":1}', '{"a":1 "b":2}', '{"a":1,"a":2}', [], None],
    ),
    (
        "required middle",
        obj({"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}}, ["b"]),
        [{"b": 1}, {"a": 1, "b": 2}, {"b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}],
        [{}, {"a": 1}, {"a": 1, "c": 3}, '{"b":1,}', '{"a":1,"b":2,"c":3,"d":4}'],
    ),
    (
        "arrays",
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
            "minItems": 2,
            "maxItems": 4,
        },
        [[0, 1], [1, 2, 3], [9, 9, 9, 9], "[ 1 , 2 ]"],
        [[], [1], [1, 2, 3, 4, 5], [1, 10], [1, "2"], "[1,2,]"],
    ),
    (
        "tuple",
        {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": {"type": "boolean"},
            "maxItems": 4,
        },
        [[], ["a"], ["a", 1], ["a", 1, True], ["a", 1, True, False]],
        [[1], ["a", "b"], ["a", 1, 2], ["a", 1, True, False, True]],
    ),
    (
        "closed tuple",
        {
            "type": "array",
            "prefixItems": [{"type": "null"}, {"type": "integer"}],
            "items": False,
            "minItems": 1,
        },
        [[None], [None, 1]],
        [[], [None, 1, 2], [1]],
    ),
    (
        "defs",
        DEFS,
        [
            {"tree": {"value": 1}},
            {"tree": {"value": 1, "children": [{"value": 2, "children": []}]}},
            {"tree": {"value": 1}, "at": {"x": 1.5, "y": -2}},
        ],
        [
            {},
            {"tree": {"value": "1"}},
            {"tree": {"value": 1, "children": [{}]}},
            {"tree": {"value": 1}, "at": {"x": 1}},
        ],
    ),
    (
        "nullable",
        obj({"n": {"type": ["integer", "null"], "minimum": 1, "maximum": 3}}, ["n"]),
        [{"n": 1}, {"n": 3}, {"n": None}],
        [{"n": 0}, {"n": 4}, {"n": "1"}],
    ),
    (
        "extra values",
        {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "ab": {"type": "null"}},
            "required": ["id"],
            "additionalProperties": {"type": "string"},
        },
        [
            {"id": 1},
            {"id": 1, "x": "y"},
            {"id": 1, "ab": None, "a": "1", "abc": "2", "b": "3", "": "4", "a\nb": "5", '"': "6"},
            '{"id":1,"x\\u0041":"y","\\n":"z"}',
        ],
        [
            {"id": 1, "x": 2},
            {"x": "y"},
            '{"id":1,"id":2}',
            '{"id":1,"ab":"z"}',
            '{"id":1,"\\u0061b":"z"}',
            '{"id":1,"a\\u0062":"z"}',
        ],
    ),
    (
        "map",
        {"type": "object", "additionalProperties": {"type": "integer"}},
        [{}, {"a": 1}, {"a": 1, "b": 2}],
        [{"a": "1"}, [], '{"a":1,}'],
    ),
    (
        "any",
        {},
        [1, '"x"', None, [1, {"a": [True]}], {"k": {"v": [1.5, None]}}],
        ["", "[1,", "{1:2}", "tru", "x"],
    ),
]


def text_of(doc: Any) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False)


def strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def valid(schema: dict[str, Any], doc: Any) -> bool:
    try:
        value = (
            json.loads(doc, object_pairs_hook=strict_pairs, parse_constant=no_constant)
            if isinstance(doc, str)
            else doc
        )
    except ValueError:
        return False
    return bool(jsonschema.Draft202012Validator(schema).is_valid(value))


@pytest.mark.parametrize(("schema"), [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_grammar_parses_in_llama_cpp(grammars: Grammars, schema: dict[str, Any]) -> None:
    gbnf = schema_to_gbnf(schema)
    assert gbnf.startswith("root ::= ")
    assert grammars.parses(gbnf), gbnf


@pytest.mark.parametrize(("schema", "good", "bad"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_grammar_accepts_exactly_the_valid_documents(
    grammars: Grammars, schema: dict[str, Any], good: list[Any], bad: list[Any]
) -> None:
    gbnf = schema_to_gbnf(schema)
    for doc in good:
        assert valid(schema, doc), doc  # the expectation itself
        assert grammars.accepts(gbnf, text_of(doc)), (text_of(doc), gbnf)
        if not isinstance(doc, str):  # pretty-printed too
            assert grammars.accepts(gbnf, json.dumps(doc, indent=2, ensure_ascii=False)), doc
    for doc in bad:
        assert not valid(schema, doc), doc
        assert not grammars.accepts(gbnf, text_of(doc)), (text_of(doc), gbnf)


def mutate(doc: Any, rng: random.Random) -> Any:
    """A random small change somewhere in ``doc``; dict key order is kept."""
    if isinstance(doc, dict) and doc and rng.random() < 0.7:
        key = rng.choice(list(doc))
        if rng.random() < 0.15:
            return {k: v for k, v in doc.items() if k != key}
        return {k: mutate(v, rng) if k == key else v for k, v in doc.items()}
    if isinstance(doc, list) and doc and rng.random() < 0.7:
        i = rng.randrange(len(doc))
        return [*doc[:i], mutate(doc[i], rng), *doc[i + 1 :]]
    if isinstance(doc, bool) or doc is None or rng.random() < 0.1:
        return rng.choice([None, True, "x", 3, 2.5, [], {}])
    if isinstance(doc, int) and rng.random() < 0.8:
        return doc + rng.choice([-1, 1]) * rng.choice([1, 2, 9, 10, 11, 99, 100, 1000])
    if isinstance(doc, int | float):  # never integral: 5.0 is an integer to jsonschema, not to the grammar
        step = rng.choice([-1, 1]) * rng.choice([0.001, 0.25, 0.5, 1, 10, 100])
        value = round(doc + step, 3) + 0.0
        return value if not value.is_integer() else value + 0.5
    if isinstance(doc, str):
        return "".join(rng.choice('aé"\\\n ') for _ in range(rng.choice([0, 1, 2, 4, 5, 6, 9])))
    if isinstance(doc, dict):
        return {**doc, rng.choice(["zz", "abc"]): rng.choice([1, "s"])}
    return [*doc, *doc[:1]] if rng.random() < 0.5 else doc[:-1]


@pytest.mark.parametrize(("schema", "good"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_mutated_documents_agree_with_jsonschema(
    grammars: Grammars, schema: dict[str, Any], good: list[Any]
) -> None:
    rng = random.Random(1234)
    gbnf = schema_to_gbnf(schema)
    seeds = [d for d in good if not isinstance(d, str)]
    # A pattern's text is written with the characters themselves (the narrowing documented there).
    ascii_only = "pattern" not in schema_text(schema)
    for _ in range(40):
        doc = mutate(copy.deepcopy(rng.choice(seeds)), rng)
        text = json.dumps(doc, ensure_ascii=ascii_only)
        expected = valid(schema, text)
        assert grammars.accepts(gbnf, text) == expected, (text, expected, gbnf)


def test_additional_properties_absent_means_closed(grammars: Grammars) -> None:
    gbnf = schema_to_gbnf({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    assert grammars.accepts(gbnf, '{"a": 1}')
    assert not grammars.accepts(gbnf, '{"a": 1, "b": 2}')
    assert grammars.accepts(schema_to_gbnf({"type": "object"}), "{}")
    assert not grammars.accepts(schema_to_gbnf({"type": "object"}), '{"a": 1}')


def test_declared_order_and_whitespace_limits(grammars: Grammars) -> None:
    gbnf = schema_to_gbnf(obj({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]))
    assert grammars.accepts(gbnf, '{"a": 1, "b": 2}')
    assert not grammars.accepts(gbnf, '{"b": 2, "a": 1}')
    assert grammars.accepts(gbnf, "{\n" + " " * 20 + '"a":1,"b":2}')
    assert not grammars.accepts(gbnf, "{\n" + " " * 21 + '"a":1,"b":2}')
    assert not grammars.accepts(gbnf, '{  "a":1,"b":2}')


def test_formats(grammars: Grammars) -> None:
    for fmt, good, bad in [
        (
            "date",
            ["2024-02-29", "1999-12-31", "2024-04-30", "2024-01-31"],
            ["2024-13-01", "2024-1-01", "2024-01-32", "2024-04-31", "2024-02-30"],
        ),
        ("time", ["23:59:59Z", "00:00:00.123+05:30"], ["24:00:00Z", "12:00:00", "12:60:00Z"]),
        ("date-time", ["2024-05-01T12:30:00Z", "2024-05-01T12:30:00.5-07:00"], ["2024-05-01 12:30:00Z"]),
        ("uuid", ["123e4567-e89b-12d3-a456-426614174000"], ["123e4567e89b12d3a456426614174000", "x"]),
    ]:
        gbnf = schema_to_gbnf({"type": "string", "format": fmt})
        assert grammars.parses(gbnf)
        for text in good:
            assert grammars.accepts(gbnf, json.dumps(text)), (fmt, text)
        for text in bad:
            assert not grammars.accepts(gbnf, json.dumps(text)), (fmt, text)


def test_json_object_grammar(grammars: Grammars) -> None:
    assert grammars.parses(JSON_OBJECT_GBNF)
    for text in ["{}", '{"a": [1, {"b": null}], "c": "d"}', '{"x": -1.5e3, "y": true}']:
        assert grammars.accepts(JSON_OBJECT_GBNF, text), text
    for text in ["[]", '"a"', "1", '{"a"}', '{"a": 1,}', "{'a': 1}"]:
        assert not grammars.accepts(JSON_OBJECT_GBNF, text), text


def test_large_counts_parse(grammars: Grammars) -> None:
    gbnf = schema_to_gbnf({"type": "array", "items": {"type": "null"}, "minItems": 2500, "maxItems": 2600})
    assert grammars.parses(gbnf)
    assert grammars.accepts(gbnf, "[" + ",".join(["null"] * 2500) + "]")
    assert not grammars.accepts(gbnf, "[" + ",".join(["null"] * 2499) + "]")
    assert grammars.parses(schema_to_gbnf({"type": "string", "maxLength": 5000}))
    big = schema_to_gbnf({"type": "integer", "minimum": -(10**30), "maximum": 10**40 + 7})
    assert grammars.accepts(big, str(10**40 + 7))
    assert not grammars.accepts(big, str(10**40 + 8))
    assert grammars.accepts(big, str(-(10**30)))
    assert not grammars.accepts(big, str(-(10**30) - 1))


def test_rule_names_are_valid_gbnf() -> None:
    gbnf = schema_to_gbnf(
        obj(
            {
                "weird key/ü": {"type": "string"},
                "root": {"type": "null"},
                "string": {"type": "integer", "minimum": 1},
            },
            ["root"],
        )
    )
    names = [line.split(" ::= ")[0] for line in gbnf.splitlines()]
    assert names[0] == "root" and len(set(names)) == len(names)
    assert all(n and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in n) for n in names)


@pytest.mark.parametrize(
    ("schema", "keyword", "path"),
    [
        (obj({"zip": {"type": "string", "pattern": "^(?=1)[0-9]{5}$"}}), "pattern", "properties.zip"),
        ({"type": "string", "pattern": "^a$", "maxLength": 3}, "maxLength", ""),
        ({"type": "number", "multipleOf": 0.5}, "multipleOf", ""),
        ({"type": "array", "items": {"type": "decimal"}}, "type", "items"),
        ({"type": "object", "properties": {"a": {"type": ["string", 3]}}}, "type", "properties.a"),
        ({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}, "not", "anyOf.1"),
        ({"$defs": {"x": {"type": "string", "format": "email"}}, "$ref": "#/$defs/x"}, "format", "$defs.x"),
        ({"type": "number", "minimum": 0.5}, "minimum", ""),
        ({"type": "number", "exclusiveMaximum": 2.25}, "exclusiveMaximum", ""),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "minimum", ""),
        ({"type": "array", "uniqueItems": True}, "uniqueItems", ""),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems", ""),
        ({"type": "string", "minLength": -1}, "minLength", ""),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf", ""),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "type", ""),
        ({"$ref": "https://example.com/schema"}, "$ref", ""),
        ({"$ref": "#/$defs/missing"}, "$ref", ""),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required", ""),
        ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties", ""),
        ({"type": "object", "properties": {"a": False}}, "false", "properties.a"),
        ({"enum": ["a", "b"], "maxLength": 1}, "maxLength", ""),
        ({"type": "string", "enum": [1, 2]}, "enum", ""),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if", ""),
        (
            {
                "type": "object",
                "properties": {
                    "a": {"type": "object", "properties": {'"q"': {}}, "additionalProperties": True}
                },
            },
            "additionalProperties",
            "properties.a",
        ),
    ],
)
def test_unsupported_schemas_raise(schema: dict[str, Any], keyword: str, path: str) -> None:
    with pytest.raises(UnsupportedSchema) as info:
        schema_to_gbnf(schema)
    assert (info.value.keyword, info.value.path) == (keyword, path)
    assert isinstance(info.value, ValueError) and str(info.value)


def test_descriptive_keywords_are_ignored() -> None:
    plain = schema_to_gbnf({"type": "string", "maxLength": 3})
    described = {
        "type": "string",
        "maxLength": 3,
        "title": "T",
        "description": "d",
        "examples": ["a"],
        "default": "a",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "x",
        "$comment": "c",
        "deprecated": False,
        "readOnly": True,
        "writeOnly": False,
    }
    assert schema_to_gbnf(described) == plain


def test_property_names_are_written_as_given(grammars: Grammars) -> None:
    schema = obj({"first  name": {"type": "string"}, "Zoë\t/": {"type": "null"}}, ["first  name", "Zoë\t/"])
    gbnf = schema_to_gbnf(schema)
    assert grammars.accepts(gbnf, json.dumps({"first  name": "x", "Zoë\t/": None}, ensure_ascii=False))
    assert not grammars.accepts(gbnf, json.dumps({"first name": "x", "Zoë\t/": None}, ensure_ascii=False))
