"""Wire models of POST /v1/embeddings: https://platform.openai.com/docs/api-reference/embeddings/create"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import Field, field_validator

from .wire import WireModel

__all__ = ["MAX_EMBEDDING_INPUTS", "EmbeddingInput", "EmbeddingRequest"]

# OpenAI's limit on inputs per request.
MAX_EMBEDDING_INPUTS = 2048

TokenId = Annotated[int, Field(ge=0)]
EmbeddingInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class EmbeddingRequest(WireModel):
    input: EmbeddingInput
    model: str
    dimensions: Annotated[int, Field(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input must hold at most {MAX_EMBEDDING_INPUTS} items, got {len(value)}")
        for i, item in enumerate(value):
            if isinstance(item, str | list) and not item:
                raise ValueError(f"input[{i}] must not be empty")
        return value

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: one string or one token list becomes a list of one."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if self.is_single:
            return [cast(list[int], value)]
        return cast(list[str] | list[list[int]], value)

    @property
    def is_single(self) -> bool:
        """True when ``input`` was one string or one token list (errors then name ``input``)."""
        # Validation left a non-empty list of one kind, so its first item tells which.
        return isinstance(self.input, str) or isinstance(self.input[0], int)
