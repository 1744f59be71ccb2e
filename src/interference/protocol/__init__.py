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
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ContentPart,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ParamError,
    PromptTokensDetails,
    ResponseFormat,
    ResponseMessage,
    SamplingFields,
    StreamOptions,
    TextPart,
    Tool,
    Usage,
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
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "CountTokensRequest",
    "DeltaMessage",
    "EmbeddingInput",
    "EmbeddingRequest",
    "ErrorBody",
    "ErrorResponse",
    "InputMessage",
    "InputText",
    "MessagesRequest",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "ParamError",
    "PromptTokensDetails",
    "ResponseFormat",
    "ResponseMessage",
    "ResponseRequest",
    "SamplingFields",
    "StreamOptions",
    "TextPart",
    "Tool",
    "Usage",
    "WireModel",
    "new_id",
    "response_item_id",
]
