"""Settings: CLI flags > environment (``INTERFERENCE_*``) > TOML file > defaults.

This is the only module that reads ``INTERFERENCE_*`` variables. ``load_settings`` returns a frozen
``Settings`` that is passed down to everything else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

__all__ = [
    "CLAUDE_ALIASES",
    "DEFAULT_ALIASES",
    "AnthropicDeployment",
    "ConfigError",
    "LocalDeployment",
    "ModelEntry",
    "OpenAIDeployment",
    "Settings",
    "UpstreamDeployment",
    "load_settings",
]

ENV_PREFIX = "INTERFERENCE_"
OPENAI_ALIASES = ("gpt-3.5-turbo", "gpt-3.5-turbo-16k", "gpt-4", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini")
# The ids Claude clients (Claude Code, the anthropic SDK's examples) send unless told otherwise.
CLAUDE_ALIASES = (
    "claude-sonnet-5",
    "claude-sonnet-4-6",
    "claude-opus-4-6",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
)
DEFAULT_ALIASES = OPENAI_ALIASES + CLAUDE_ALIASES


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineOptions(_Frozen):
    """Options of one local llama.cpp engine."""

    ctx_size: Annotated[int, Field(ge=0)] = 0
    threads: Annotated[int, Field(ge=0)] = 0
    parallel: Annotated[int, Field(ge=1, le=256)] = 8
    batch_size: Annotated[int, Field(ge=16)] = 512
    max_queue: Annotated[int, Field(ge=0)] = 64
    cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    request_timeout: Annotated[float, Field(gt=0)] = 600.0
    # llama.cpp's repacked weight buffers; None: off on CPUs with AMX (they crash there), on elsewhere.
    repack: bool | None = None


class LocalDeployment(EngineOptions):
    """A GGUF served in-process; ``path`` None means the embedded model."""

    type: Literal["local"] = "local"
    path: str | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0


class UpstreamDeployment(_Frozen):
    """What every HTTP upstream has: where it is, its name for the model, its key, its timeouts."""

    base_url: str
    model: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    weight: Annotated[float, Field(gt=0)] = 1.0

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


class AnthropicDeployment(UpstreamDeployment):
    """An upstream that speaks Anthropic's Messages API (Anthropic itself, or a compatible server)."""

    type: Literal["anthropic"] = "anthropic"
    anthropic_version: str = "2023-06-01"


Deployment = Annotated[LocalDeployment | OpenAIDeployment | AnthropicDeployment, Field(discriminator="type")]


class ModelEntry(_Frozen):
    """One public model name and the deployments that serve it."""

    name: Annotated[str, Field(min_length=1)]
    aliases: tuple[str, ...] = ()
    routing: Literal["round_robin", "least_outstanding"] = "round_robin"
    cooldown: Annotated[float, Field(ge=0)] = 30.0
    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]


class Settings(EngineOptions):
    """Everything ``interference serve`` needs."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 1337
    model: str | None = None
    model_name: str | None = None
    aliases: tuple[str, ...] = DEFAULT_ALIASES
    api_keys: tuple[SecretStr, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The access log: one line per request, as text or as one JSON object; access_log False turns it off.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    # Origins whose pages may call the API from a browser ("*" for any); none sends no CORS headers.
    cors_origins: tuple[str, ...] = ()
    # Local embeddings for /v1/embeddings: on by default with the bundled all-MiniLM-L6-v2;
    # embedding_model is a GGUF file or a sentence-transformers BERT folder instead.
    embeddings: bool = True
    embedding_model: str | None = None
    # Named keys with limits (docs/keys.md); the usage ledger (None: in the user's data dir);
    # where limits are counted: "memory" (this process) or "redis://host:port/db" (shared by replicas).
    keys_file: str | None = None
    usage_db: str | None = None
    limits_backend: str = "memory"
    limits_fail_open: bool = False

    @field_validator("limits_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v != "memory" and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError('must be "memory" or a redis:// URL')
        return v

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions(**{k: getattr(self, k) for k in EngineOptions.model_fields})


# Environment variables, each mapped to a settings key; list values are comma-separated.
_ENV_KEYS = {
    "HOST": "host",
    "PORT": "port",
    "MODEL": "model",
    "MODEL_NAME": "model_name",
    "CTX_SIZE": "ctx_size",
    "THREADS": "threads",
    "PARALLEL": "parallel",
    "BATCH_SIZE": "batch_size",
    "MAX_QUEUE": "max_queue",
    "CACHE_TYPE": "cache_type",
    "REQUEST_TIMEOUT": "request_timeout",
    "REPACK": "repack",
    "ALIASES": "aliases",
    "API_KEYS": "api_keys",
    "API_KEY": "api_keys",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
    "ACCESS_LOG": "access_log",
    "CORS_ORIGINS": "cors_origins",
    "EMBEDDINGS": "embeddings",
    "EMBEDDING_MODEL": "embedding_model",
    "KEYS_FILE": "keys_file",
    "USAGE_DB": "usage_db",
    "LIMITS_BACKEND": "limits_backend",
    "LIMITS_FAIL_OPEN": "limits_fail_open",
}
_LIST_KEYS = {"aliases", "api_keys", "cors_origins"}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for suffix, key in _ENV_KEYS.items():
        raw = env.get(ENV_PREFIX + suffix)
        if raw is None:
            continue
        if key in _LIST_KEYS:
            values[key] = tuple(part.strip() for part in raw.split(",") if part.strip())
        else:
            values[key] = raw
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _key_name(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("local", "openai", "anthropic") and parts and parts[-1].endswith("]"):
            continue  # discriminator tag pydantic inserts for tagged unions
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the sources in precedence order and validate once.

    ``cli`` holds only the flags the user actually gave (None values are dropped).
    """
    env = os.environ if env is None else env
    cli_values = {k: v for k, v in (cli or {}).items() if v is not None}
    file_name = config_file or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = _from_file(Path(file_name)) if file_name else {}
    merged.update(_from_env(env))
    merged.update(cli_values)
    where = f" in {file_name}" if file_name else ""
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key_name(tuple(err["loc"])) or "(top level)"
        raise ConfigError(f"invalid setting '{key}'{where}: {err['msg']}") from None
    _check_unique_names(settings.models, where)
    return _resolve_api_keys(settings, env, where)


def _check_unique_names(models: tuple[ModelEntry, ...], where: str) -> None:
    seen: set[str] = set()
    for i, entry in enumerate(models):
        names = [(f"models[{i}].name", entry.name)] + [(f"models[{i}].aliases", a) for a in entry.aliases]
        for key, name in names:
            if name in seen:
                raise ConfigError(f"invalid setting '{key}'{where}: the name '{name}' is used twice")
            seen.add(name)


def _resolve_api_keys(settings: Settings, env: Mapping[str, str], where: str) -> Settings:
    """Read each ``api_key_env`` now, so a missing variable fails at start-up, not on the first request."""
    entries = []
    for i, entry in enumerate(settings.models):
        deployments = []
        for j, d in enumerate(entry.deployments):
            if isinstance(d, UpstreamDeployment) and d.api_key_env is not None:
                value = env.get(d.api_key_env)
                if not value:
                    raise ConfigError(
                        f"invalid setting 'models[{i}].deployments[{j}].api_key_env'{where}: "
                        f"environment variable {d.api_key_env} is not set"
                    )
                d = d.model_copy(update={"api_key": SecretStr(value)})
            deployments.append(d)
        entries.append(entry.model_copy(update={"deployments": tuple(deployments)}))
    return settings.model_copy(update={"models": tuple(entries)})
