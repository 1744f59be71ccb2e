"""Wire models: OpenAI chat/completions (``openai``), the Responses API (``responses``), embeddings,
and Anthropic's Messages API (``anthropic``, translated to and from chat by ``anthropic_openai``).

Pure pydantic models and validators: no HTTP, no engine, nothing else from the package.
"""

from __future__ import annotations

from .anthropic import (
    CountTokensRequest,
    MessagesRequest,
)
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
    MemoryReport,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ResponseFormat,
    SamplingFields,
    StreamOptions,
    SystemMessage,
    TextPart,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from .responses import (
    InputMessage,
    InputText,
    ResponseRequest,
    parse_items,
    response_item_id,
)
from .wire import ParamError, WireModel, new_id, random_hex

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ContentPart",
    "CountTokensRequest",
    "EmbeddingInput",
    "EmbeddingRequest",
    "ErrorBody",
    "ErrorResponse",
    "FunctionCall",
    "FunctionMessage",
    "InputMessage",
    "InputText",
    "MemoryReport",
    "MessagesRequest",
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
    "parse_items",
    "random_hex",
    "response_item_id",
]
