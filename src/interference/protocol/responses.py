"""Wire models of POST /v1/responses: https://platform.openai.com/docs/api-reference/responses/create

Input items, tools and ``tool_choice`` are modelled as OpenAI documents them. Tools of a kind that a
hosted platform runs (``web_search``, ``file_search``, ``mcp``…) are kept as plain objects: a backend that
serves /v1/responses itself gets them untouched, and translation leaves them out. ``conversation`` and
``background`` need state this server does not keep, and are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator

from .openai import Probability, Temperature
from .wire import WireModel, random_hex

__all__ = [
    "CustomTool",
    "CustomToolCallItem",
    "FunctionCallItem",
    "FunctionTool",
    "InputItem",
    "InputMessage",
    "InputText",
    "ItemReference",
    "NamespaceTool",
    "OtherItem",
    "ReasoningItem",
    "ResponseRequest",
    "ResponseTool",
    "ToolOutputItem",
    "parse_items",
    "response_item_id",
]


def response_item_id(prefix: str) -> str:
    """An id as the Responses API writes them: ``resp_…``, ``msg_…``."""
    return f"{prefix}_{random_hex()}"


# ---------------------------------------------------------------------------- content parts


class InputText(WireModel):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class RefusalContent(WireModel):
    type: Literal["refusal"]
    refusal: str


class InputFile(WireModel):
    type: Literal["input_file"]


ContentPart = Annotated[InputText | InputImage | RefusalContent | InputFile, Field(discriminator="type")]


def content_text(content: str | list[ContentPart]) -> str:
    """The text of a message's (or a tool output's) content: text and refusal parts joined."""
    if isinstance(content, str):
        return content
    out: list[str] = []
    for part in content:
        if isinstance(part, InputText):
            out.append(part.text)
        elif isinstance(part, RefusalContent):
            out.append(part.refusal)
    return "".join(out)


# ---------------------------------------------------------------------------- input items


class InputMessage(WireModel):
    """A message item; ``type`` may be left out, as in OpenAI's "easy" input messages."""

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ContentPart] | str
    status: str | None = None

    @property
    def text(self) -> str:
        return content_text(self.content)


class _CallItem(WireModel):
    """What a model's call of a function or of a custom tool has."""

    type: str
    id: str | None = None
    call_id: str
    name: str
    namespace: str | None = None
    status: str | None = None


class FunctionCallItem(_CallItem):
    type: Literal["function_call"]
    arguments: str


class CustomToolCallItem(_CallItem):
    type: Literal["custom_tool_call"]
    input: str


class ToolOutputItem(WireModel):
    """``function_call_output`` or ``custom_tool_call_output``: a tool's result, by its call id."""

    type: Literal["function_call_output", "custom_tool_call_output"]
    id: str | None = None
    call_id: str
    output: str | list[ContentPart]
    status: str | None = None

    @property
    def text(self) -> str:
        return content_text(self.output)


class ReasoningItem(WireModel):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


class ItemReference(WireModel):
    type: Literal["item_reference"]
    id: str


class OtherItem(WireModel):
    """An item of a hosted tool (``web_search_call``, ``local_shell_call``…): kept for backends that run
    those tools, left out by translation."""

    type: str


# Tags end in "-item" (and "-tool" below) so that api/errors.py can drop them from error locations.
_ITEM_TAGS = {
    "message": "message-item",
    "function_call": "call-item",
    "custom_tool_call": "custom-call-item",
    "function_call_output": "output-item",
    "custom_tool_call_output": "output-item",
    "reasoning": "reasoning-item",
    "item_reference": "reference-item",
}


def _item_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind is None:
        return "message-item"  # an "easy" message: role and content only
    if not isinstance(kind, str):
        return None
    return _ITEM_TAGS.get(kind, "other-item")


InputItem = Annotated[
    Annotated[InputMessage, Tag("message-item")]
    | Annotated[FunctionCallItem, Tag("call-item")]
    | Annotated[CustomToolCallItem, Tag("custom-call-item")]
    | Annotated[ToolOutputItem, Tag("output-item")]
    | Annotated[ReasoningItem, Tag("reasoning-item")]
    | Annotated[ItemReference, Tag("reference-item")]
    | Annotated[OtherItem, Tag("other-item")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item",
        custom_error_message="each input item must be an object with a string 'type' (or a 'role')",
    ),
]


# ---------------------------------------------------------------------------- tools


class FunctionTool(WireModel):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTool(WireModel):
    """A tool whose input is free-form text, optionally shaped by a grammar or a regex (``format``)."""

    type: Literal["custom"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    format: dict[str, Any] | None = None


class NamespaceTool(WireModel):
    """Tools grouped under one name; their calls come back carrying ``namespace``."""

    type: Literal["namespace"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    tools: list[FunctionTool | CustomTool]


class HostedTool(WireModel):
    """A tool the platform runs (web_search, file_search, code_interpreter, mcp…)."""

    type: str


def _tool_tag(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    kind = value["type"]
    return f"{kind}-tool" if kind in ("function", "custom", "namespace") else "hosted-tool"


ResponseTool = Annotated[
    Annotated[FunctionTool, Tag("function-tool")]
    | Annotated[CustomTool, Tag("custom-tool")]
    | Annotated[NamespaceTool, Tag("namespace-tool")]
    | Annotated[HostedTool, Tag("hosted-tool")],
    Discriminator(
        _tool_tag,
        custom_error_type="invalid_tool",
        custom_error_message="each tool must be an object with a string 'type'",
    ),
]


# ---------------------------------------------------------------------------- the request

# Fields that need state we do not keep; each is refused when set to anything but its default.
_STATEFUL = ("conversation", "background")
# Caps on one request's lists: far above what agents send (Codex ~10 tools, a long session a few
# thousand items), low enough that a hostile body cannot make the translation quadratic.
MAX_INPUT_ITEMS = 10_000
MAX_TOOLS = 512


class ResponseRequest(WireModel):
    # The list comes first so that a bad item is reported by its path (input[0].role), not as "not a string".
    input: Annotated[list[InputItem], Field(min_length=1, max_length=MAX_INPUT_ITEMS)] | str
    model: str
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    stream: bool | None = False
    temperature: Temperature | None = None
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: Annotated[list[ResponseTool], Field(max_length=MAX_TOOLS)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: Probability | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: list[Any] | str) -> list[Any] | str:
        if isinstance(value, str) and not value:
            raise ValueError("input must not be empty")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _known_choice(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str) and value not in ("auto", "none", "required"):
            raise ValueError("tool_choice must be 'auto', 'none', 'required' or an object")
        if isinstance(value, dict) and not isinstance(value.get("type"), str):
            raise ValueError("tool_choice objects need a string 'type'")
        return value

    @property
    def items(self) -> list[InputItem]:
        """The input as items: a string is one user message."""
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return list(self.input)

    def tools_echo(self) -> list[dict[str, Any]]:
        """The tools as a response repeats them: what ``model_dump(exclude_none=True)`` gives of each.

        The objects the client sent, with their null fields left out, when they are at hand: dumping an
        agent's tools anew costs more than the rest of a streamed response's events together.
        """
        sent = self.wire_field("tools")
        if not isinstance(sent, list) or len(sent) != len(self.tools or ()):
            return [tool.model_dump(exclude_none=True) for tool in self.tools or ()]
        return [_without_nulls(tool) for tool in sent]

    @property
    def unsupported(self) -> tuple[str, str] | None:
        """The first field set that this server cannot honour: (param, why)."""
        for name in _STATEFUL:
            if getattr(self, name):
                return name, f"{name} is not supported by this server"
        return None


def _without_nulls(tool: dict[str, Any]) -> dict[str, Any]:
    """A sent tool without its null fields (a namespace's tools' too), as a dump of its model leaves them."""
    out = {key: value for key, value in tool.items() if value is not None}
    inner = out.get("tools")
    if out.get("type") == "namespace" and isinstance(inner, list):
        out["tools"] = [_without_nulls(t) if isinstance(t, dict) else t for t in inner]
    return out


_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


def parse_items(entries: list[dict[str, Any]]) -> list[InputItem]:
    """Stored items (inputs, and output items such as messages and calls) as input items."""
    return _ITEMS.validate_python(entries, strict=False)
