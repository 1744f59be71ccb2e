"""Wire models: OpenAI chat/completions (``openai``), the Responses API (``responses``) and embeddings.

Pure pydantic models and validators: no HTTP, no engine, nothing else from the package.
"""

from __future__ import annotations

from .embeddings import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingInput,
    EmbeddingRequest,
)
from .openai import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    ErrorBody,
    ErrorResponse,
    FunctionCall,
    FunctionMessage,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ParamError,
    ResponseFormat,
    SamplingFields,
    StreamOptions,
    SystemMessage,
    TextPart,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
    WireModel,
    new_id,
)
from .responses import (
    InputMessage,
    InputText,
    ResponseRequest,
    response_item_id,
)

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ContentPart",
    "EmbeddingInput",
    "EmbeddingRequest",
    "ErrorBody",
    "ErrorResponse",
    "FunctionCall",
    "FunctionMessage",
    "InputMessage",
    "InputText",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "ParamError",
    "ResponseFormat",
    "ResponseRequest",
    "SamplingFields",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "WireModel",
    "new_id",
    "response_item_id",
]
