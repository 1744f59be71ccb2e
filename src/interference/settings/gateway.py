"""The gateway file's schema: ``[[models]]`` entries and the deployments (local or upstream) behind them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from .engine import EngineOptions
from .fields import Frozen, Interval, Positive, Seconds

__all__ = [
    "AnthropicDeployment",
    "Deployment",
    "LocalDeployment",
    "ModelEntry",
    "OpenAIDeployment",
    "UpstreamDeployment",
]


class LocalDeployment(EngineOptions):
    """A GGUF served in-process; ``path`` None means the embedded model."""

    type: Literal["local"] = "local"
    path: str | None = None
    weight: Positive = 1.0


class UpstreamDeployment(Frozen):
    """What every HTTP upstream has: where it is, its name for the model, its key, its timeouts."""

    base_url: str
    model: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout: Seconds = 600.0
    connect_timeout: Seconds = 5.0
    weight: Positive = 1.0

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _one_key_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("api_key") is not None:
            raise ValueError("set api_key or api_key_env, not both")
        return v


class OpenAIDeployment(UpstreamDeployment):
    """An upstream OpenAI-compatible endpoint (vLLM, SGLang, Ollama, llama-server, OpenAI)."""

    type: Literal["openai"] = "openai"
    # It serves /v1/responses itself: Responses requests go to it untranslated (docs/gateway.md).
    responses: bool = False


class AnthropicDeployment(UpstreamDeployment):
    """An upstream that speaks Anthropic's Messages API (Anthropic itself, or a compatible server)."""

    type: Literal["anthropic"] = "anthropic"
    anthropic_version: str = "2023-06-01"


Deployment = Annotated[LocalDeployment | OpenAIDeployment | AnthropicDeployment, Field(discriminator="type")]


class ModelEntry(Frozen):
    """One public model name and the deployments that serve it."""

    name: Annotated[str, Field(min_length=1)]
    aliases: tuple[str, ...] = ()
    routing: Literal["round_robin", "least_outstanding"] = "round_robin"
    cooldown: Interval = 30.0
    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]
    # Local deployments only: unload after this many idle seconds (None: model_ttl), never unload if pinned.
    ttl: Interval | None = None
    pin: bool = False
