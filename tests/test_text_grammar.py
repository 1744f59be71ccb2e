"""Regular expressions and Lark grammars → GBNF, and the grammar of optional tool calls.

Acceptance is llama.cpp's own (``grammar_check``); expectations come from Python's ``re`` and from
the ``lark`` package, the reference readers of the two syntaxes.
"""

from __future__ import annotations

import json

import lark
import pytest
from grammar_check import Grammars

from interference.engine.call_grammar import tagged_calls_gbnf
from interference.engine.json_schema import schema_to_gbnf
from interference.engine.lark_grammar import text_rules
from interference.engine.text_grammar import TextGrammarError


def gbnf(syntax: str, definition: str, *, json_string: bool = False) -> str:
    used: set[str] = {"root"}

    def reserve(hint: str) -> str:
        name, i = hint, 1
        while name in used:
            i += 1
            name = f"{hint}-{i}"
        used.add(name)
        return name

    start, rules = text_rules(syntax, definition, json_string=json_string, reserve=reserve)
    return f"root ::= {start}\n" + "".join(f"{k} ::= {v}\n" for k, v in rules.items())


REGEXES = [
    (r"[a-z]+\d{2,3}(foo|bar)?", ["abc12", "x999bar", "abc1234", "ABC12", "abc12baz", "12"]),
    (r"(?i)hello world", ["HeLLo World", "hello world", "hello  world", "hello"]),
    (r"[^\n]*\n", ['any "thing"\n', "two\nlines\n", "\n", ""]),
    (r"\w+@\w+\.(com|org)", ["a_1@b.com", "a@b.net", "@b.com", "a@b.org"]),
    (r"\s*-?\d+(\.\d+)?\s*", [" -1.5 ", "3", "3.", "- 3", "\t42\n"]),
    (r"(ab|a)*b{0,2}c?", ["", "ababab", "aab", "abbb", "abbc", "ca"]),
    (r"[^a-c\\\"]{2}", ["zz", 'a"', "\\d", "é€", "d"]),
    (r".{3}", ["abc", "a\nc", "ab", "\t\t\t"]),
]


@pytest.mark.parametrize(("pattern", "texts"), REGEXES, ids=[r[0] for r in REGEXES])
def test_regex_accepts_what_python_matches(grammars: Grammars, pattern: str, texts: list[str]) -> None:
    raw, escaped = gbnf("regex", pattern), gbnf("regex", pattern, json_string=True)
    for text in texts:
        expected = bool(__import__("re").fullmatch(pattern, text))
        assert grammars.accepts(raw, text) == expected, (pattern, text)
        inside = json.dumps(text, ensure_ascii=False)[1:-1]
        assert grammars.accepts(escaped, inside) == expected, (pattern, inside)


@pytest.mark.parametrize("pattern", [r"(?=a)b", r"(a)\1", r"a(?<!b)", r"\bword\b", r"a$b"])
def test_regex_features_without_a_grammar_are_refused(pattern: str) -> None:
    with pytest.raises(TextGrammarError):
        gbnf("regex", pattern)


APPLY_PATCH = r"""start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?

filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /(.+)/) LF
change_line: ("+" | "-" | " ") /(.*)/ LF
eof_line: "*** End of File" LF

%import common.LF
"""
PATCHES = [
    "*** Begin Patch\n*** Add File: a.txt\n+hello\n+\n*** End Patch\n",
    '*** Begin Patch\n*** Update File: src/x.py\n@@ def f():\n-    return "a"\n+    return 1\n*** End Patch',
    "*** Begin Patch\n*** Delete File: old.md\n*** Update File: b\n*** Move to: c\n*** End Patch\n",
    "*** Begin Patch\n*** Update File: b\n@@\n x\n*** End of File\n*** End Patch\n",
    "*** Begin Patch\n*** Frob File: a.txt\n+hello\n*** End Patch\n",
    "*** Begin Patch\n*** End Patch\n",
    "*** Begin Patch\n*** Add File: a.txt\nhello\n*** End Patch\n",
    "*** Begin Patch\n*** Delete File: x\n",
]
ARITHMETIC = r"""
?start: sum
sum: product (("+" | "-") product)*
product: atom (("*" | "/") atom)*
atom: NUMBER | "(" sum ")" | NAME -> var
NAME: /[a-z_]+/i
// comments are skipped
%import common.NUMBER
%import common.WS_INLINE
%ignore WS_INLINE
"""
SUMS = ["1+2", " 1 + 2 * (x - 3.5e2) ", "(a)", "1 +", "()", "2 ** 3", "Foo_Bar/4", "1\n+2"]
SMALL = r"""
start: word ("," " "? word)~0..2 "."
word: LETTER~1..5 | "'" /[^']*/ "'"
%import common.LETTER
"""
WORDS = ["ab.", "ab, c,d.", "a, b, c, d.", "'x, y'.", "abcdef.", "ab", "'a'b."]


@pytest.mark.parametrize(
    ("grammar", "texts"),
    [(APPLY_PATCH, PATCHES), (ARITHMETIC, SUMS), (SMALL, WORDS)],
    ids=["apply_patch", "ignore-and-imports", "counts-and-ranges"],
)
def test_lark_accepts_what_lark_parses(grammars: Grammars, grammar: str, texts: list[str]) -> None:
    # lark refuses terminals that match the empty text; the same language, spelled for it:
    spelled = grammar.replace("/(.*)/", "/(.+)/?").replace("/[^']*/", "/[^']+/?")
    reference = lark.Lark(spelled, parser="earley", lexer="dynamic")
    raw, escaped = gbnf("lark", grammar), gbnf("lark", grammar, json_string=True)
    for text in texts:
        try:
            reference.parse(text)
            expected = True
        except lark.exceptions.LarkError:
            expected = False
        assert grammars.accepts(raw, text) == expected, (text, raw)
        assert grammars.accepts(escaped, json.dumps(text, ensure_ascii=False)[1:-1]) == expected, text
    assert not grammars.accepts(escaped, PATCHES[0])  # a raw newline is not JSON


@pytest.mark.parametrize(
    "grammar",
    [
        'start: "a" b',
        "%declare X\nstart: X",
        'start: x{a}\nx{p}: p "a"',
        "%import .other.X\nstart: X",
        "a: 1",
    ],
)
def test_lark_features_without_a_grammar_are_refused(grammar: str) -> None:
    with pytest.raises(TextGrammarError):
        gbnf("lark", grammar)


def test_an_unreadable_custom_format_is_left_unenforced(grammars: Grammars) -> None:
    schema = {"type": "string", "x-grammar": {"syntax": "lark", "definition": "%declare X\nstart: X"}}
    plain = schema_to_gbnf(schema)
    assert grammars.accepts(plain, '"anything at all"')
    enforced = schema_to_gbnf({"type": "string", "x-grammar": {"syntax": "regex", "definition": "a+"}})
    assert grammars.accepts(enforced, '"aaa"') and not grammars.accepts(enforced, '"ab"')


CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "get"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]+$"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


def call(city: str) -> str:
    return '<tool_call>{"name": "get", "arguments": {"city": "' + city + '"}}</tool_call>'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Plain text with <b>tags</b> and a partial <tool_call", True),
        ("", True),
        (call("Paris"), True),
        ("  \n" + call("Oslo") + "\n" + call("Rome"), True),
        (call("paris"), False),  # the argument breaks its pattern
        ("Sure: " + call("Paris"), False),  # a call is the whole answer or nothing
        (call("Paris") + " and text", False),
        (call("Oslo") + call("Rome") + call("Bern"), False),  # at most two calls here
        ('<tool_call>{"name": "other", "arguments": {}}</tool_call>', False),
    ],
)
def test_optional_calls_grammar(grammars: Grammars, text: str, expected: bool) -> None:
    gbnf = tagged_calls_gbnf(CALL, open_tag="<tool_call>", close_tag="</tool_call>", max_calls=2)
    assert grammars.accepts(gbnf, text) == expected


def test_optional_calls_after_reasoning(grammars: Grammars) -> None:
    think = ("<think>", "</think>")
    tags = {"open_tag": "<tool_call>", "close_tag": "</tool_call>", "max_calls": 1}
    fresh = tagged_calls_gbnf(
        CALL, open_tag="<tool_call>", close_tag="</tool_call>", max_calls=1, think=think
    )
    assert grammars.accepts(fresh, "<think>maybe <tool_call> here</think>\n" + call("Oslo"))
    assert grammars.accepts(fresh, "<think>x</think>an answer")
    assert not grammars.accepts(fresh, "<think>x</think>text " + call("Oslo"))
    opened = tagged_calls_gbnf(CALL, **tags, think=think, thinking_open=True)
    assert grammars.accepts(opened, "hmm</think>" + call("Oslo"))
    assert not grammars.accepts(opened, "no reasoning")
