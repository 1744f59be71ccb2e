"""Wire models of POST /v1/responses (text only): https://platform.openai.com/docs/api-reference/responses/create

We are stateless: ``store`` is accepted and ignored, and anything that needs a stored response or
conversation (``previous_response_id``, ``conversation``, ``background``) is refused with a 400.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .openai import Probability, Temperature, WireModel

__all__ = ["InputMessage", "InputText", "ResponseRequest", "response_item_id"]


def response_item_id(prefix: str) -> str:
    """An id as the Responses API writes them: ``resp_…``, ``msg_…``."""
    return f"{prefix}_{uuid.uuid4().hex}"


class InputText(WireModel):
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(WireModel):
    """A message item; ``type`` may be left out, as in OpenAI's "easy" input messages."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[InputText] | str

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


# Fields that need state we do not keep; each is refused when set to anything but its default.
_STATEFUL = ("previous_response_id", "conversation", "background")


class ResponseRequest(WireModel):
    # The list comes first so that a bad item is reported by its path (input[0].role), not as "not a string".
    input: Annotated[list[InputMessage], Field(min_length=1)] | str
    model: str
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    stream: bool | None = False
    temperature: Temperature | None = None
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_p: Probability | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: list[InputMessage] | str) -> list[InputMessage] | str:
        if isinstance(value, str) and not value:
            raise ValueError("input must not be empty")
        return value

    @property
    def unsupported(self) -> tuple[str, str] | None:
        """The first field set that this text-only, stateless server cannot honour: (param, why)."""
        for name in _STATEFUL:
            if getattr(self, name):
                return name, f"{name} needs stored responses; this server is stateless"
        if self.tools:
            return "tools", "tools are not supported by /v1/responses yet"
        fmt = (self.text or {}).get("format") or {"type": "text"}
        if not isinstance(fmt, dict) or fmt.get("type") != "text":
            return "text.format", "only text output is supported by /v1/responses yet"
        return None
