"""Function calling for local models: the prompt format, the constraint and the parser.

Models whose chat template knows nothing of tools get them described in a system message, and are
asked to answer a call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the format
Hermes- and Qwen-style models were trained on). When the request makes a call mandatory
(``tool_choice`` "required" or a named function), the output is constrained by a JSON schema
grammar, so the arguments always parse. When it is optional, a grammar applies only if some tool asks
for it (``strict``, or a custom tool's format): then the answer is free text or tagged calls whose
arguments follow the schemas (``engine/call_grammar.py``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    Tool,
    ToolMessage,
    random_hex,
)

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "call_schema",
    "calls_from_json",
    "enforced_in_auto",
    "max_calls",
    "message_dicts",
    "offered_tools",
    "parse_tagged_calls",
    "tool_mode",
]

# A bound on calls in one constrained answer, so a small model cannot repeat calls until max_tokens.
MAX_PARALLEL_CALLS = 4
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_TAGGED = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def tool_mode(request: ChatCompletionRequest) -> str:
    """'none', 'auto', 'required' or 'named'."""
    if not request.tools or request.tool_choice == "none":
        return "none"
    if isinstance(request.tool_choice, NamedToolChoice):
        return "named"
    return "required" if request.tool_choice == "required" else "auto"


def _system_prompt(tools: list[Tool], mode: str) -> str:
    specs = "\n".join(
        json.dumps(
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": t.function.parameters or {"type": "object", "properties": {}},
            }
        )
        for t in tools
    )
    rule = (
        "You must call one of these functions."
        if mode in ("required", "named")
        else "If a function would help, call it; otherwise answer normally."
    )
    return (
        "You can call functions. They are described here as JSON:\n<tools>\n"
        f"{specs}\n</tools>\n{rule} To call a function, reply with\n"
        f'{TOOL_CALL_OPEN}{{"name": <function-name>, "arguments": <arguments-object>}}{TOOL_CALL_CLOSE}'
    )


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw or "{}")
    except (TypeError, ValueError):
        return raw


def _message_dict(message: ChatMessage, *, native: bool) -> dict[str, Any]:
    """One message for the template; tool calls become text unless the template renders them itself."""
    role = "tool" if message.role == "function" else "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": message.text}
    if isinstance(message, AssistantMessage) and message.tool_calls:
        calls = message.tool_calls
        if native:
            # Tool-aware templates (Qwen, Hermes, Llama 3.1...) read arguments as an object.
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments),
                    },
                }
                for call in calls
            ]
        else:
            tagged = [
                TOOL_CALL_OPEN
                + json.dumps({"name": call.function.name, "arguments": _arguments(call.function.arguments)})
                + TOOL_CALL_CLOSE
                for call in calls
            ]
            out["content"] = (message.text + "\n" if message.text else "") + "\n".join(tagged)
    if native and isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def offered_tools(request: ChatCompletionRequest) -> list[Tool]:
    """The tools the model is shown: all of them, or only the one a named ``tool_choice`` picks."""
    tools = list(request.tools or [])
    if isinstance(request.tool_choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == request.tool_choice.function.name]
    return tools


def message_dicts(request: ChatCompletionRequest, *, native: bool = False) -> list[dict[str, Any]]:
    """The conversation as template messages.

    With ``native`` the chat template renders tools itself (it is given them separately); otherwise
    the tools are described in a system message of our own when tool calling is on.
    """
    messages = [_message_dict(m, native=native) for m in request.messages]
    mode = tool_mode(request)
    if mode == "none" or native:
        return messages
    prompt = _system_prompt(offered_tools(request), mode)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    params = tool.function.parameters
    if not params:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return params


def _enforced(tool: Tool) -> bool:
    """Whether a call's arguments must follow the tool's schema even when calling it is optional:
    ``strict`` functions, and the custom tools whose input has a format (``x-grammar``)."""
    if tool.function.strict:
        return True
    props = (tool.function.parameters or {}).get("properties")
    return isinstance(props, dict) and isinstance(props.get("input"), dict) and "x-grammar" in props["input"]


def enforced_in_auto(request: ChatCompletionRequest) -> bool:
    """Whether an optional call is grammar-constrained: some offered tool asks for it."""
    return tool_mode(request) == "auto" and any(_enforced(t) for t in offered_tools(request))


def max_calls(request: ChatCompletionRequest) -> int:
    single = request.parallel_tool_calls is False or isinstance(request.tool_choice, NamedToolChoice)
    return 1 if single else MAX_PARALLEL_CALLS


def call_schema(request: ChatCompletionRequest, *, one: bool = False) -> dict[str, Any]:
    """A JSON schema for a mandatory call: one call object, or a list of them when parallel calls are on.

    ``one``: the schema of one call written in free text (``tool_choice: auto``), where only the
    enforced tools' arguments follow their schemas and the others are any object."""
    tools = offered_tools(request)
    loose = {"type": "object", "additionalProperties": True}
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": _arguments_schema(t) if not one or _enforced(t) else loose,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    single = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    if one or max_calls(request) == 1:
        schema = dict(single)
    else:
        schema = {"type": "array", "items": single, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}
    # "$ref": "#/$defs/X" inside a tool's parameters resolves from the document root: hoist the definitions.
    defs: dict[str, Any] = {}
    for t in tools:
        for key in ("$defs", "definitions"):
            defs.update((t.function.parameters or {}).get(key) or {})
    if defs:
        schema["$defs"] = defs
        schema["definitions"] = defs
    return schema


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": f"call_{random_hex(24)}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def calls_from_json(text: str) -> list[dict[str, Any]] | None:
    """Tool calls from a constrained answer (one call object or a list of them)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        calls.append(_call(item["name"], item.get("arguments", {})))
    return calls or None


def parse_tagged_calls(text: str, tools: list[Tool]) -> list[dict[str, Any]] | None:
    """Tool calls written as ``<tool_call>{...}</tool_call>`` in a free answer, if any parse."""
    names = {t.function.name for t in tools}
    calls = []
    for match in _TAGGED.finditer(text):
        try:
            item = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("name") in names:
            calls.append(_call(item["name"], item.get("arguments", {})))
    return calls or None
