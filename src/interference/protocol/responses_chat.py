"""Responses requests as chat completions, and chat tool calls back as Responses items: pure functions.

A Responses request is served by any chat backend through this translation:

- ``instructions`` become the first system message; message items keep their role; ``function_call``
  and ``custom_tool_call`` items become an assistant message's ``tool_calls`` (consecutive calls share
  one message); their outputs become ``tool`` messages; ``reasoning`` items and items of hosted tools
  are left out (a chat backend cannot take them); an ``item_reference`` is replaced by the item it names.
- ``function`` tools stay functions; a ``custom`` tool becomes a function taking one string, ``input``;
  the tools of a ``namespace`` are offered as ``<namespace>__<name>`` and their calls come back under
  their own name with ``namespace`` set. Hosted tools are left out and reported to the caller.
- ``tool_choice`` maps to chat's (``allowed_tools`` narrows the offered tools); ``text.format`` maps
  to ``response_format``; ``max_output_tokens`` to ``max_completion_tokens``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .responses import (
    CustomTool,
    CustomToolCallItem,
    FunctionCallItem,
    FunctionTool,
    InputImage,
    InputItem,
    InputMessage,
    InputText,
    ItemReference,
    NamespaceTool,
    RefusalContent,
    ResponseRequest,
    ToolOutputItem,
)
from .wire import ParamError

__all__ = ["ChatPlan", "ToolName", "chat_body", "group_items", "tool_call_item"]

# Separates a namespace from a tool's name in the flat function names chat backends accept.
NAMESPACE_SEPARATOR = "__"
_CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class ToolName:
    """What a flat chat function name stands for."""

    name: str
    kind: str = "function"  # or "custom"
    namespace: str | None = None


@dataclass(slots=True)
class ChatPlan:
    """A chat completion body for a Responses request, and what it takes to map the answer back."""

    body: dict[str, Any]
    names: dict[str, ToolName] = field(default_factory=dict)
    dropped_tools: list[str] = field(default_factory=list)
    dropped_items: int = 0


def flat_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _function(tool: FunctionTool | CustomTool, namespace: str | None) -> dict[str, Any]:
    if isinstance(tool, CustomTool):
        description = tool.description or ""
        fmt = tool.format or {}
        parameters = _CUSTOM_PARAMETERS
        if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
            syntax = fmt.get("syntax") or "lark"
            description += f"\nThe input must follow this {syntax} definition:\n{fmt['definition']}"
            # Local engines enforce it (a vendor keyword; other JSON Schema readers ignore it).
            text = {"type": "string", "x-grammar": {"syntax": syntax, "definition": fmt["definition"]}}
            parameters = {**_CUSTOM_PARAMETERS, "properties": {"input": text}}
        return {
            "type": "function",
            "function": {
                "name": flat_name(tool.name, namespace),
                "description": description.strip(),
                "parameters": parameters,
            },
        }
    function: dict[str, Any] = {"name": flat_name(tool.name, namespace)}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tools(request: ResponseRequest) -> tuple[list[dict[str, Any]], dict[str, ToolName], list[str]]:
    offered: list[dict[str, Any]] = []
    names: dict[str, ToolName] = {}
    dropped: list[str] = []
    for tool in request.tools or []:
        members: list[tuple[FunctionTool | CustomTool, str | None]]
        if isinstance(tool, NamespaceTool):
            members = [(inner, tool.name) for inner in tool.tools]
        elif isinstance(tool, FunctionTool | CustomTool):
            members = [(tool, None)]
        else:
            dropped.append(tool.type)
            continue
        for inner, namespace in members:
            spec = _function(inner, namespace)
            flat = spec["function"]["name"]
            names[flat] = ToolName(
                inner.name, "custom" if isinstance(inner, CustomTool) else "function", namespace
            )
            offered.append(spec)
    return offered, names, dropped


def _choice(
    request: ResponseRequest, offered: list[dict[str, Any]], names: dict[str, ToolName]
) -> tuple[Any, list[dict[str, Any]]]:
    """Chat's ``tool_choice`` and the tools left to offer."""
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        if choice == "required" and not offered:
            return None, offered  # only hosted tools were required, and they are gone
        return choice, offered
    kind = choice.get("type")
    if kind in ("function", "custom"):
        flat = flat_name(str(choice.get("name") or ""), choice.get("namespace"))
        if flat not in names:
            raise ParamError(f"tool_choice names '{flat}', which is not in tools", param="tool_choice")
        return {"type": "function", "function": {"name": flat}}, offered
    if kind == "allowed_tools":
        allowed = {
            flat_name(str(t.get("name") or ""), t.get("namespace"))
            for t in choice.get("tools") or []
            if isinstance(t, dict)
        }
        kept = [spec for spec in offered if spec["function"]["name"] in allowed]
        mode = choice.get("mode") or "auto"
        if mode not in ("auto", "required"):
            raise ParamError("tool_choice.mode must be 'auto' or 'required'", param="tool_choice.mode")
        if not kept:
            return ("none" if mode == "auto" else None), []
        return mode, kept
    return None, offered  # a hosted tool was chosen: it is not offered here


def group_items(items: list[InputItem]) -> list[list[InputItem]]:
    """Items in the groups that must stay together when old input is dropped: a call with its output."""
    groups: list[list[InputItem]] = []
    open_calls: dict[str, list[InputItem]] = {}
    for item in items:
        if isinstance(item, ToolOutputItem) and item.call_id in open_calls:
            open_calls.pop(item.call_id).append(item)
            continue
        group: list[InputItem] = [item]
        groups.append(group)
        if isinstance(item, FunctionCallItem | CustomToolCallItem):
            open_calls[item.call_id] = group
    return groups


def _user_content(item: InputMessage) -> str | list[dict[str, Any]]:
    if isinstance(item.content, str):
        return item.content
    parts: list[dict[str, Any]] = []
    for part in item.content:
        if isinstance(part, InputText):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, RefusalContent):
            parts.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage):
            if not part.image_url:
                raise ParamError("input_image needs image_url here (file_id is not supported)", param="input")
            parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        else:
            raise ParamError("input_file content is not supported", param="input")
    return parts


def _messages(items: list[InputItem]) -> tuple[list[dict[str, Any]], int]:
    """Chat messages for Responses input items, and how many items had no chat equivalent."""
    by_id: dict[str, InputItem] = {}
    for item in items:
        key = getattr(item, "id", None)
        if isinstance(key, str) and key and not isinstance(item, ItemReference):
            by_id[key] = item
    messages: list[dict[str, Any]] = []
    dropped = 0
    for item in items:
        if isinstance(item, ItemReference):
            found = by_id.get(item.id)
            if found is None:
                raise ParamError(f"item_reference '{item.id}' names no item of this input", param="input")
            item = found
        if isinstance(item, InputMessage):
            if item.role == "user":
                messages.append({"role": "user", "content": _user_content(item)})
            else:
                messages.append({"role": item.role, "content": item.text})
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            if isinstance(item, FunctionCallItem):
                arguments = item.arguments
            else:
                arguments = json.dumps({"input": item.input}, ensure_ascii=False)
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": flat_name(item.name, item.namespace), "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, ToolOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
        else:
            dropped += 1  # reasoning, and items of hosted tools
    return messages, dropped


def chat_body(request: ResponseRequest, items: list[InputItem], *, stream: bool) -> ChatPlan:
    """The chat completion body that serves ``request`` over ``items`` (its whole input)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    converted, dropped_items = _messages(items)
    messages.extend(converted)
    if not messages:
        raise ParamError("input holds no message a model can read", param="input")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}  # upstreams send usage only when asked
    offered, names, dropped = _tools(request)
    choice, offered = _choice(request, offered, names)
    if offered:
        body["tools"] = offered
        if choice is not None:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    fmt = (request.text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        if fmt["type"] == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if key in fmt}
            schema.setdefault("name", "response")
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    optional = {
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    return ChatPlan(body, names, dropped, dropped_items)


def tool_call_item(
    call: dict[str, Any], names: dict[str, ToolName], *, item_id: str, status: str = "completed"
) -> dict[str, Any]:
    """The Responses output item for one whole chat tool call ({"id", "function": {"name", "arguments"}})."""
    function = call.get("function") or {}
    flat = str(function.get("name") or "")
    arguments = str(function.get("arguments") or "")
    known = names.get(flat, ToolName(flat))
    custom = known.kind == "custom"
    item: dict[str, Any] = {
        "type": "custom_tool_call" if custom else "function_call",
        "id": item_id,
        "status": status,
        "call_id": call.get("id") or item_id,
        "name": known.name,
    }
    if custom:
        item["input"] = custom_input(arguments)
    else:
        item["arguments"] = arguments
    if known.namespace:
        item["namespace"] = known.namespace
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's input from the arguments of the function that stood for it."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments
