"""The ``Settings`` model and its sources: flags > environment (``INTERFERENCE_*``) > TOML file > defaults.

This is the only module that reads ``INTERFERENCE_*`` variables. ``load_settings`` returns a frozen
``Settings`` that is passed down to everything else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ..memory_budget import parse_budget
from .engine import EngineOptions
from .fields import Count, Flag, Interval, List, Positive, Seconds, Secrets, flag
from .gateway import ModelEntry, UpstreamDeployment

__all__ = [
    "CLAUDE_ALIASES",
    "DEFAULT_ALIASES",
    "ENV_PREFIX",
    "ConfigError",
    "Settings",
    "load_settings",
    "setting_flags",
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


class Settings(BaseSettings, EngineOptions):
    """Everything ``interference serve`` needs.

    Each field is declared once, here: its TOML key is its name, its environment variable
    ``INTERFERENCE_<NAME>``, its ``Flag`` (when it has one) its command-line flag, and the docstring
    under it that flag's help.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", use_attribute_docstrings=True
    )

    host: Annotated[str, flag("--host", group="server")] = "127.0.0.1"
    """address to listen on (default: 127.0.0.1)"""
    port: Annotated[int, Field(ge=0, le=65535), flag("--port", group="server")] = 1337
    """port to listen on (default: 1337)"""
    model: Annotated[str | None, flag("-m", "--model", metavar="GGUF")] = None
    """GGUF file to serve (default: the embedded model)"""
    model_name: Annotated[str | None, flag("--model-name", metavar="ID")] = None
    """public id of that model (default: file name)"""
    aliases: Annotated[List, flag("--alias", action="append", group="common", metavar="NAME")] = (
        DEFAULT_ALIASES
    )
    """a name that maps to the default model (repeatable; replaces the default aliases)"""
    api_keys: Annotated[Secrets, flag("--api-key", action="append", group="server", metavar="KEY")] = ()
    """require this key (repeatable; default: no auth)"""
    models: tuple[ModelEntry, ...] = ()
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], flag("--log-level", group="server")
    ] = "info"
    """log verbosity (default: info)"""
    # The access log: one line per request, as text or as one JSON object; access_log False turns it off.
    log_format: Annotated[Literal["text", "json"], flag("--log-format", group="server")] = "text"
    """access log format (default: text)"""
    access_log: Annotated[bool, flag("--no-access-log", action="false", group="server")] = True
    """do not log each request"""
    # Origins whose pages may call the API from a browser ("*" for any); none sends no CORS headers.
    cors_origins: Annotated[
        List, flag("--cors-origin", action="append", group="server", metavar="ORIGIN")
    ] = ()
    """let pages from this origin call the API ('*' for any; repeatable; default: none)"""
    # Local embeddings for /v1/embeddings: on by default with the bundled all-MiniLM-L6-v2;
    # embedding_model is a GGUF file or a sentence-transformers BERT folder instead.
    embeddings: Annotated[bool, flag("--no-embeddings", action="false")] = True
    """do not load an embedding model"""
    embedding_model: Annotated[str | None, flag("--embedding-model", metavar="PATH")] = None
    """GGUF file or sentence-transformers BERT folder for /v1/embeddings (default: all-MiniLM-L6-v2)"""
    # Many local models under one memory budget (docs/models.md).
    models_dir: Annotated[str | None, flag("--models-dir", metavar="DIR", group="models")] = None
    """serve every *.gguf in DIR under its file name"""
    memory_budget: Annotated[
        Annotated[int, Field(ge=1)] | str | None,  # str: only "auto" (parse_budget turns the rest)
        BeforeValidator(parse_budget),
        flag("--memory-budget", metavar="SIZE", group="models"),
    ] = "auto"
    """host memory for local models, their KV and the shared prompt cache: MiB, a size (400MB, 2GiB), off,
    or auto (default: auto, 75% of the RAM available at start-up)"""
    model_ttl: Annotated[Interval, flag("--model-ttl", metavar="SECONDS", group="models")] = 0.0
    """unload a model idle this long (default: 0, never)"""
    load_timeout: Annotated[Seconds, flag("--load-timeout", metavar="SECONDS", group="models")] = 120.0
    """how long a request waits for its model to load (default: 120)"""
    lazy: Annotated[bool, flag("--lazy", action="true", group="models")] = False
    """load the default model on its first request, not at start-up"""
    # Limits and shutdown (README: "Limits and shutdown").
    max_body_mib: Annotated[Positive, flag("--max-body-mib", metavar="MIB", group="limits")] = 16.0
    """largest request body, then 413 (default: 16)"""
    header_timeout: Annotated[Seconds, flag("--header-timeout", metavar="SECONDS", group="limits")] = 10.0
    """close a connection whose request headers are not complete by then (default: 10)"""
    shutdown_timeout: Annotated[Interval, flag("--shutdown-timeout", metavar="SECONDS", group="limits")] = (
        30.0
    )
    """on SIGTERM/SIGINT, let running streams finish this long (default: 30)"""
    embedding_queue: Annotated[Count, flag("--embedding-queue", metavar="N", group="limits")] = 64
    """embedding requests that may wait for the embedding model before 429 (default: 64)"""
    # Named keys with limits (docs/keys.md); the usage ledger (None: in the user's data dir);
    # where limits are counted: "memory" (this process) or "redis://host:port/db" (shared by replicas).
    keys_file: Annotated[str | None, flag("--keys-file", metavar="FILE", group="server")] = None
    """named keys with limits (docs/keys.md)"""
    usage_db: Annotated[str | None, flag("--usage-db", metavar="FILE", group="server")] = None
    """usage ledger (default: the user's data dir)"""
    # Stored responses (docs/openai-api.md): where, and how many, how large and how old at most.
    responses_db: Annotated[str | None, flag("--responses-db", metavar="FILE", group="server")] = None
    """stored responses (default: the user's data dir)"""
    responses_max_count: Annotated[Count, flag("--responses-max-count", metavar="N", group="server")] = 10_000
    """stored responses kept at most, oldest out first (default: 10000; 0 stores none)"""
    responses_max_mib: Annotated[
        float, Field(ge=0), flag("--responses-max-mib", metavar="MIB", group="server")
    ] = 256.0
    """bytes of stored responses kept at most (default: 256)"""
    responses_max_age: Annotated[Seconds, flag("--responses-max-age", metavar="SECONDS", group="server")] = (
        30 * 86400.0
    )
    """a stored response is forgotten this long after it was made (default: 2592000, 30 days)"""
    limits_backend: Annotated[str, flag("--limits-backend", metavar="URL", group="server")] = "memory"
    """where limits are counted: "memory" or redis://host:port/db"""
    limits_fail_open: Annotated[bool, flag("--limits-fail-open", action="toggle", group="server")] = False
    """serve limited keys unlimited while Redis is unreachable (default: refuse them, 503)"""

    @field_validator("limits_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v != "memory" and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError('must be "memory" or a redis:// URL')
        return v

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions(**{k: getattr(self, k) for k in EngineOptions.model_fields})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` takes only its arguments; ``load_settings`` adds the environment and file."""
        return (init_settings,)


def setting_flags() -> dict[str, Flag]:
    """Each setting that has a command-line flag, by field name, in declaration order; its help is the
    field's docstring (``%`` escaped for argparse)."""
    out: dict[str, Flag] = {}
    for name, info in Settings.model_fields.items():
        found = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if found is not None:
            if not info.description:
                raise TypeError(f"the setting {name} has a flag but no docstring to be its help")
            out[name] = replace(found, help=" ".join(info.description.split()).replace("%", "%%"))
    return out


class _Env(EnvSettingsSource):
    """``INTERFERENCE_*`` variables from a given mapping; ``INTERFERENCE_API_KEY`` means ``api_keys`` too."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        values = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        single = values.get(ENV_PREFIX + "API_KEY")
        if single is not None:
            values.setdefault(ENV_PREFIX + "API_KEYS", single)
        self.env_vars = {k.lower(): v for k, v in values.items()}


def _with_sources(env: Mapping[str, str], file: Path | None) -> type[Settings]:
    """``Settings`` read from its init arguments (the flags), then ``env``, then ``file``, then defaults."""

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, _Env(settings_cls, env)]
            if file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=file))
            return tuple(sources)

    return _Loaded


def _check_file(path: Path) -> None:
    """A missing or malformed file is one clear line (the TOML source would skip a missing one)."""
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
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
    file = Path(file_name) if file_name else None
    if file is not None:
        _check_file(file)
    where = f" in {file_name}" if file_name else ""
    try:
        loaded = _with_sources(env, file)(**cli_values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key_name(tuple(err["loc"])) or "(top level)"
        raise ConfigError(f"invalid setting '{key}'{where}: {err['msg']}") from None
    # The plain class, not the one bound to these sources: what is passed down compares and copies simply.
    settings = Settings.model_construct(**{k: getattr(loaded, k) for k in Settings.model_fields})
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
