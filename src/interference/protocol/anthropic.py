"""Pydantic models of Anthropic's Messages API (https://docs.anthropic.com/en/api/messages).

Requests accept unknown fields and unknown content block types (clients send extras, and a native
Anthropic upstream may understand what we do not); the known blocks are checked strictly. This
module imports nothing else from the package.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, PrivateAttr, Tag, model_validator

from .wire import ParamError, WireModel, joined_text, random_hex

__all__ = [
    "KNOWN_BLOCK_TYPES",
    "AnthropicTool",
    "AnthropicToolChoice",
    "ContentBlock",
    "CountTokensRequest",
    "ImageBlock",
    "InputMessage",
    "MessagesRequest",
    "OtherBlock",
    "TextBlock",
    "ThinkingBlock",
    "ToolResultBlock",
    "ToolUseBlock",
    "anthropic_id",
]

KNOWN_BLOCK_TYPES = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"})


def anthropic_id(prefix: str) -> str:
    """An Anthropic-style id such as ``msg_01…`` or ``toolu_01…``."""
    return f"{prefix}_01{random_hex(22)}"


class TextBlock(WireModel):
    type: Literal["text"]
    text: str


class ImageBlock(WireModel):
    type: Literal["image"]
    source: dict[str, Any]


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None

    @property
    def text(self) -> str:
        return joined_text(self.content, TextBlock)

    @property
    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(b, ImageBlock) for b in self.content)


class ThinkingBlock(WireModel):
    type: Literal["thinking", "redacted_thinking"]


class OtherBlock(WireModel):
    """A block type this server does not know (documents, server tool results...)."""

    type: str


def _block_tag(block: Any) -> str:
    """A block's model, by its ``type``: unknown types (and non-objects) go to ``OtherBlock``."""
    kind = block.get("type") if isinstance(block, dict) else getattr(block, "type", None)
    # A ``type`` that is no string (an object, a list: unhashable) is OtherBlock's to refuse.
    return kind if isinstance(kind, str) and kind in KNOWN_BLOCK_TYPES else "other"


# Tagged by ``type``: trying each model in turn cost several failed validations per block.
ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[ThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


class InputMessage(WireModel):
    # Claude Code puts "system" messages (reminders) between the turns.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    @property
    def text(self) -> str:
        return joined_text(self.content, TextBlock)


class AnthropicTool(WireModel):
    """A client tool (``input_schema``) or a server tool (a versioned ``type`` such as ``web_search_…``)."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @property
    def is_client_tool(self) -> bool:
        return self.type in (None, "custom")


class AnthropicToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_needs_name(self) -> AnthropicToolChoice:
        if self.type == "tool" and not self.name:
            raise ParamError("tool_choice of type 'tool' needs a name", param="tool_choice.name")
        return self


class Metadata(WireModel):
    user_id: str | None = None


class Thinking(WireModel):
    type: str
    budget_tokens: int | None = None


class CountTokensRequest(WireModel):
    """POST /v1/messages/count_tokens: https://docs.anthropic.com/en/api/messages-count-tokens"""

    model: str
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    thinking: Thinking | None = None
    tool_choice: AnthropicToolChoice | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=128)] | None = None
    # The request's ``anthropic-beta`` header (a comma list of beta names), set by the server from the
    # HTTP request: Anthropic upstreams get it as sent, the other backends ignore it.
    _beta: str = PrivateAttr(default="")

    @property
    def beta(self) -> str:
        return self._beta

    def set_beta(self, beta: str) -> None:
        self._beta = beta

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> CountTokensRequest:
        choice = self.tool_choice
        if choice is not None and choice.type == "tool":
            names = {t.name for t in self.tools or []}
            if choice.name not in names:
                raise ParamError(
                    f"tool_choice names '{choice.name}', which is not in tools", param="tool_choice"
                )
        elif choice is not None and choice.type == "any" and not self.tools:
            raise ParamError("tool_choice 'any' needs tools", param="tool_choice")
        return self

    @property
    def system_text(self) -> str:
        if self.system is None:
            return ""
        if isinstance(self.system, str):
            return self.system
        return "\n".join(b.text for b in self.system)

    @property
    def thinking_enabled(self) -> bool:
        return self.thinking is not None and self.thinking.type != "disabled"

    def blocks(self) -> list[BaseModel]:
        """Every content block of every message (tool results' own blocks included)."""
        out: list[BaseModel] = []
        for message in self.messages:
            if isinstance(message.content, list):
                for block in message.content:
                    out.append(block)
                    if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
                        out.extend(block.content)
        return out


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages: https://docs.anthropic.com/en/api/messages"""

    max_tokens: Annotated[int, Field(ge=1)]
    metadata: Metadata | None = None
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool | None = False
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
