"""Pydantic models of the OpenAI wire format.

Field order follows OpenAI's API reference (https://platform.openai.com/docs/api-reference).
Request models accept unknown fields (clients send extras) and expose their names through
``ignored_fields``; non-OpenAI extras sit in their own commented block. This module imports
nothing else from the package.

Responses are not modelled here: ``api/chat.py`` and ``api/completions.py`` write them as dicts
with orjson, about ten times faster per streamed chunk than building and dumping a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from .wire import ParamError, WireModel, joined_text, now

__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ContentPart",
    "ErrorBody",
    "ErrorResponse",
    "FunctionCall",
    "FunctionMessage",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "ResponseFormat",
    "SamplingFields",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
]


# --------------------------------------------------------------------------- shared


class StreamOptions(WireModel):
    include_usage: bool = False


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
StopField = Annotated[str | Annotated[list[str], Field(max_length=16)] | None, Field(default=None)]


class SamplingFields(WireModel):
    """Sampling parameters shared by chat and text completions."""

    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stop: StopField = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    user: str | None = None

    # Extras understood by llama.cpp-based servers (not part of OpenAI's API).
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Probability | None = None
    repeat_penalty: Annotated[float, Field(ge=0.0)] | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options is only allowed when stream is true", param="stream_options")
        return self

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --------------------------------------------------------------------------- chat


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: dict[str, Any]


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Message(WireModel):
    """What every chat message has: a role and (for most roles) content."""

    content: str | Sequence[ContentPart | RefusalPart] | None = None

    @property
    def text(self) -> str:
        """The message content as plain text; text parts are joined."""
        return joined_text(self.content, TextPart)


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class FunctionCall(WireModel):
    name: str
    # A JSON text, as the model wrote it (it may not parse); never an object.
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None
    # Deprecated by OpenAI in favour of tool_calls; still sent by older clients.
    function_call: FunctionCall | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Message):
    """The deprecated ``function`` role: a function's result, named."""

    role: Literal["function"]
    content: str | None
    name: str


_MESSAGE_TAGS = MappingProxyType(
    {role: f"{'system' if role == 'developer' else role}-message" for role in get_args(Role)}
)


def _message_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return _MESSAGE_TAGS.get(role) if isinstance(role, str) else None


# Tags are suffixed so that api/errors.py can drop them from error locations ("function" is also a field).
ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("system-message")]
    | Annotated[UserMessage, Tag("user-message")]
    | Annotated[AssistantMessage, Tag("assistant-message")]
    | Annotated[ToolMessage, Tag("tool-message")]
    | Annotated[FunctionMessage, Tag("function-message")],
    Discriminator(
        _message_tag,
        custom_error_type="invalid_role",
        custom_error_message="each message must be an object whose role is one of "
        + ", ".join(repr(r) for r in get_args(Role)),
        custom_error_context={"discriminator": "role"},
    ),
]


class FunctionDefinition(WireModel):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(WireModel):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions: https://platform.openai.com/docs/api-reference/chat/create"""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str
    logprobs: bool | None = None
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ParamError(
                    f"tool_choice names '{self.tool_choice.function.name}', which is not in tools",
                    param="tool_choice",
                )
        elif self.tool_choice == "required" and not self.tools:
            raise ParamError("tool_choice 'required' needs tools", param="tool_choice")
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("top_logprobs requires logprobs to be true", param="top_logprobs")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def enable_thinking(self) -> bool | None:
        """``chat_template_kwargs.enable_thinking`` (vLLM's and llama-server's switch for a thinking
        template), when the client set it as a boolean; None leaves the template's default."""
        kwargs = (self.model_extra or {}).get("chat_template_kwargs")
        value = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
        return value if isinstance(value, bool) else None


# --------------------------------------------------------------------------- completions


class CompletionRequest(SamplingFields):
    """POST /v1/completions: https://platform.openai.com/docs/api-reference/completions/create"""

    model: str
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | list[int]
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    # OpenAI's documented default for the legacy endpoint.
    max_tokens: PositiveInt | None = 16
    suffix: str | None = None

    @property
    def prompt_text(self) -> str | list[int]:
        if isinstance(self.prompt, str):
            return self.prompt
        if self.prompt and isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return [int(t) for t in self.prompt]


# --------------------------------------------------------------------------- models and errors


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "interference"
    # Not OpenAI's: what the model serves (chat and completions, or embeddings), and whether it is
    # the server's default model, so a client such as the chat page can offer the right ones.
    kind: Literal["chat", "embedding"] = "chat"
    default: bool = False
    # Extras: whether the model is in memory, and for local models what it costs.
    status: Literal["loaded", "loading", "unloaded"] = "loaded"
    context_length: int | None = None
    size_mb: float | None = None
    memory_mb: int | None = None


class MemoryReport(BaseModel):
    """Not OpenAI's: the host memory budget of the local models (``--memory-budget``), in MiB."""

    budget_mb: int | None  # None: no budget
    budget_auto: bool = False  # --memory-budget auto: a share of the RAM available at start-up
    models_mb: int  # weights, KV and compute buffers of the models loaded (or loading)
    kv_mb: int  # of which the KV pools
    embedding_mb: int = 0  # the embedding model (weights and buffers), counted from start-up
    prompt_cache_mb: int  # held by the one prompt cache all local engines share
    prompt_cache_limit_mb: int  # what it may grow to now: what the models leave, up to --cache-ram
    prompt_cache_released_mb: int  # given back to make room for models, since start-up
    evictions: int  # models unloaded to make room, since start-up


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    memory: MemoryReport | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
