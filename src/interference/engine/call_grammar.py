"""The grammar of an answer that may call tools: free text, or tagged calls.

When calls are optional (``tool_choice: auto``) the model answers in text, or with calls written as
``<open>{"name": ..., "arguments": ...}<close>`` (what the call parser reads: an answer that opens
with the tag). The text may hold anything but the opening tag; once the tag is written, each call
must match its JSON schema (``strict`` functions, custom tools with a format), and after the last
call the answer ends. A thinking template's reasoning (``<think>...</think>``) may come first.
Text that avoids a tag is the right-linear grammar of the automaton that reads the tag, so checking
a token of free text stays cheap.
"""

from __future__ import annotations

from typing import Any

from .gbnf import class_char, literal, repeat
from .json_schema import schema_to_gbnf

__all__ = ["tagged_calls_gbnf"]


def _avoiding(tag: str, prefix: str, then: str) -> list[str]:
    """Rules ``{prefix}0..`` for text that never contains ``tag``, followed by the term ``then``."""
    if not tag or tag[0] in tag[1:]:
        raise ValueError("a tag's first character must not recur in it")
    first = class_char(tag[0])
    out = []
    for i in range(len(tag)):
        # State i: the last i characters written are the tag's first i characters.
        alts = [f"{literal(tag[0])} {prefix}1"] if len(tag) > 1 else []
        if i == 0:
            alts.append(f"[^{first}] {prefix}0")
        else:
            alts.append(f"[^{first}{class_char(tag[i])}] {prefix}0")
            if i + 1 < len(tag):
                alts.append(f"{literal(tag[i])} {prefix}{i + 1}")
        alts.append(then)
        out.append(f"{prefix}{i} ::= " + " | ".join(alts))
    return out


def tagged_calls_gbnf(
    call_schema: dict[str, Any],
    *,
    open_tag: str,
    close_tag: str,
    max_calls: int,
    think: tuple[str, str] | None = None,
    thinking_open: bool = False,
) -> str:
    """Text without ``open_tag``, or 1..``max_calls`` calls, each one JSON document valid against
    ``call_schema`` between the tags; ``think`` (open, close) allows reasoning before either, already
    opened by the prompt when ``thinking_open``."""
    names = {"root", "answer", "calls", "gap", "reasoning"}
    reserved = frozenset(names | {f"text{i}" for i in range(len(open_tag))})
    if think:
        reserved |= {f"thought{i}" for i in range(len(think[1]))}
    rules = schema_to_gbnf(call_schema, root="call", reserved=reserved)
    out = ["root ::= reasoning answer" if think else "root ::= answer"]
    if think:
        opened, closed = think
        out += _avoiding(closed, "thought", f"{literal(closed)} gap")
        reasoning = "thought0" if thinking_open else f"({literal(opened)} thought0)?"
        out.append(f"reasoning ::= {reasoning}")
    out.append("answer ::= text0 | gap calls")
    out += _avoiding(open_tag, "text", '""')
    one = f"{literal(open_tag)} gap call gap {literal(close_tag)}"
    more = repeat(f"(gap {one})", 0, max_calls - 1)
    out.append(f"calls ::= {one} {more}".rstrip())
    out.append("gap ::= [ \\t\\n]*")
    return "\n".join(out) + "\n" + rules
