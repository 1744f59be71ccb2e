"""Anthropic Messages <-> OpenAI chat completions, as pure functions over wire shapes.

One direction serves Claude clients from OpenAI-compatible backends (the local engine, vLLM...):
``chat_request`` turns a Messages request into a ``ChatCompletionRequest`` and ``stop_reason`` names
how it ended. The other serves OpenAI clients from an Anthropic upstream: ``messages_body`` turns a
chat request into a Messages body, ``chat_choice`` / ``chat_usage`` read a whole Messages response,
and ``EventTranslator`` turns a Messages event stream into OpenAI chunk choices (``thinking`` blocks
become ``reasoning_content``, as vLLM and DeepSeek send a thinking model's reasoning).

Problems a translation cannot express are ``ParamError``s (a 400 naming the parameter).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .anthropic import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    OtherBlock,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from .openai import (
    ChatCompletionRequest,
    FunctionMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from .wire import ParamError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "EventTranslator",
    "chat_choice",
    "chat_request",
    "chat_usage",
    "finish_reason",
    "messages_body",
    "stop_reason",
    "validated_chat_request",
]

# Anthropic requires max_tokens; an OpenAI client that leaves it out gets this many.
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


# --------------------------------------------------------------------------- Anthropic -> OpenAI request


def _image_part(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise ParamError(f"image source type '{source.get('type')}' is not supported", param="messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _user_messages(content: list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn: its tool results become tool messages, the rest one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        if isinstance(block, ToolResultBlock):
            if block.has_image:
                raise ParamError("image blocks inside tool_result are not supported", param=f"{where}[{i}]")
            text = block.text
            if block.is_error:
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, OtherBlock):
            raise ParamError(
                f"content blocks of type '{block.type}' are not supported", param=f"{where}[{i}]"
            )
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content_value: Any = "".join(p["text"] for p in parts) if only_text else parts
        out.append({"role": "user", "content": content_value})
    return out


def _assistant_message(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
        elif isinstance(block, OtherBlock | ImageBlock | ToolResultBlock):
            kind = block.type
            raise ParamError(
                f"assistant content blocks of type '{kind}' are not supported", param=f"{where}[{i}]"
            )
        # thinking blocks are the model's own notes: not part of the conversation an OpenAI model sees
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return message


def _chat_messages(request: CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    # System messages between the turns join the system prompt: many chat templates and servers accept a
    # system message only at the start.
    system = [request.system_text] if request.system is not None else []
    system += [m.text for m in request.messages if m.role == "system"]
    if system:
        messages.append({"role": "system", "content": "\n\n".join(system)})
    for i, message in enumerate(request.messages):
        where = f"messages[{i}].content"
        if message.role == "system":
            continue
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
        elif message.role == "user":
            messages.extend(_user_messages(message.content, where))
        else:
            messages.append(_assistant_message(message.content, where))
    return messages


def chat_request(request: CountTokensRequest, *, stream: bool | None = None) -> dict[str, Any]:
    """A Messages (or count_tokens) request as a chat completions body, for ``ChatCompletionRequest``."""
    body: dict[str, Any] = {"model": request.model, "messages": _chat_messages(request)}
    if request.tools:
        tools = []
        for i, tool in enumerate(request.tools):
            if not tool.is_client_tool:
                raise ParamError(
                    f"server tool '{tool.type}' is not supported by this model", param=f"tools[{i}]"
                )
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            function["parameters"] = tool.input_schema or {"type": "object", "properties": {}}
            tools.append({"type": "function", "function": function})
        body["tools"] = tools
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use is not None and request.tools:
            body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    if isinstance(request, MessagesRequest):
        body["max_tokens"] = request.max_tokens
        optional = {
            "stop": request.stop_sequences or None,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "user": request.metadata.user_id if request.metadata else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        is_streaming = bool(request.stream) if stream is None else stream
        if is_streaming:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # upstreams send usage only when asked
    return body


def validated_chat_request(request: CountTokensRequest) -> ChatCompletionRequest:
    """``chat_request`` validated; raises pydantic's ``ValidationError`` or ``ParamError``."""
    body = chat_request(request)
    chat = ChatCompletionRequest.model_validate(body)
    chat.set_tenant(request.tenant)
    chat.set_wire_body(body)
    return chat


def stop_reason(finish: str | None, stop_sequence: str | None) -> str:
    """An OpenAI ``finish_reason`` as Anthropic's ``stop_reason``."""
    if finish == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish or "", "end_turn")


# --------------------------------------------------------------------------- OpenAI -> Anthropic request


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": head, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(message: Any) -> list[dict[str, Any]]:
    if isinstance(message.content, str) or message.content is None:
        return [{"type": "text", "text": message.content or ""}]
    blocks = []
    for part in message.content:
        dumped = part.model_dump()
        blocks.append(
            _image_block(dumped) if dumped["type"] == "image_url" else {"type": "text", "text": part.text}
        )
    return blocks


def _arguments(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        raise ParamError("tool call arguments must be a JSON object", param="messages") from None
    if not isinstance(value, dict):
        raise ParamError("tool call arguments must be a JSON object", param="messages")
    return value


def messages_body(request: ChatCompletionRequest, *, model: str) -> dict[str, Any]:
    """A chat completions request as an Anthropic Messages body for ``model``."""
    for param, value in (("n", request.n not in (None, 1)), ("logprobs", bool(request.logprobs))):
        if value:
            raise ParamError(f"{param} is not supported by this model's Anthropic upstream", param=param)
    if request.response_format is not None and request.response_format.type != "text":
        raise ParamError(
            "response_format is not supported by this model's Anthropic upstream", param="response_format"
        )
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating turns: consecutive messages of one role become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in request.messages:
        if isinstance(message, SystemMessage):
            system.append(message.text)
        elif isinstance(message, UserMessage):
            add("user", _user_blocks(message))
        elif isinstance(message, ToolMessage | FunctionMessage):
            tool_use_id = message.tool_call_id if isinstance(message, ToolMessage) else message.name
            block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": message.text}
            add("user", [block])
        else:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": message.text}] if message.text else []
            for call in message.tool_calls or []:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": _arguments(call.function.arguments),
                    }
                )
            add("assistant", blocks or [{"type": "text", "text": ""}])
    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": request.max_new_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.stop_strings:
        body["stop_sequences"] = request.stop_strings
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)  # OpenAI's range is 0-2, Anthropic's 0-1
    for key in ("top_p", "top_k"):
        if getattr(request, key) is not None:
            body[key] = getattr(request, key)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "input_schema": t.function.parameters or {"type": "object", "properties": {}},
            }
            for t in request.tools
        ]
    choice = request.tool_choice
    if choice is not None and request.tools:
        if isinstance(choice, str):
            body["tool_choice"] = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
        else:
            body["tool_choice"] = {"type": "tool", "name": choice.function.name}
        if request.parallel_tool_calls is False and body["tool_choice"]["type"] != "none":
            body["tool_choice"]["disable_parallel_tool_use"] = True
    if request.stream:
        body["stream"] = True
    return body


# --------------------------------------------------------------------------- Anthropic -> OpenAI response


def finish_reason(stop: str | None) -> str | None:
    return None if stop is None else _FINISH_REASONS.get(stop, "stop")


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Anthropic usage as OpenAI's: the prompt counts every input token, cached ones included."""
    if not isinstance(usage, dict):
        return None

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_choice(message: dict[str, Any]) -> dict[str, Any]:
    """A whole Messages response as one chat completion choice."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "thinking":
            thoughts.append(str(block.get("thinking", "")))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if any(thoughts):  # as vLLM and DeepSeek return a thinking model's reasoning
        out["reasoning_content"] = "".join(thoughts)
    if calls:
        out["tool_calls"] = calls
    return {"index": 0, "message": out, "finish_reason": finish_reason(message.get("stop_reason")) or "stop"}


class EventTranslator:
    """Anthropic stream events to OpenAI chunk choices (``{"index", "delta", "finish_reason"}``).

    ``feed`` takes one event's JSON object and returns the choices it becomes; ``usage`` is the
    OpenAI usage once ``message_delta`` has been seen; ``done`` is set by ``message_stop``.
    """

    __slots__ = ("_calls", "_input", "_tool_blocks", "done", "error", "usage")

    def __init__(self) -> None:
        self._input: dict[str, Any] = {}
        self._tool_blocks: dict[int, int] = {}  # content block index -> tool call index
        self._calls = 0
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.done = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._input = dict(message.get("usage") or {})
            return [self._choice({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                call = self._tool_blocks[event.get("index", 0)] = self._calls
                self._calls += 1
                head = {
                    "index": call,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self._choice({"tool_calls": [head]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._choice({"content": block["text"]})]
            if block.get("type") == "thinking" and block.get("thinking"):
                return [self._choice({"reasoning_content": block["thinking"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._choice({"content": delta["text"]})]
            if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                return [self._choice({"reasoning_content": delta["thinking"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                call = self._tool_blocks.get(event.get("index", 0), 0)
                piece = {"index": call, "function": {"arguments": delta["partial_json"]}}
                return [self._choice({"tool_calls": [piece]})]
            return []
        if kind == "message_delta":
            usage = {**self._input, **{k: v for k, v in (event.get("usage") or {}).items() if v is not None}}
            self.usage = chat_usage(usage)
            stop = (event.get("delta") or {}).get("stop_reason")
            return [self._choice({}, finish_reason(stop) or "stop")]
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = (
                event.get("error") if isinstance(event.get("error"), dict) else {"message": str(event)}
            )
        return []

    @staticmethod
    def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish}
