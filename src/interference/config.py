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

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .flags import Flag, flag
from .memory_budget import parse_budget

__all__ = [
    "CLAUDE_ALIASES",
    "DEFAULT_ALIASES",
    "AnthropicDeployment",
    "ConfigError",
    "EngineOptions",
    "Flag",
    "LocalDeployment",
    "ModelEntry",
    "OpenAIDeployment",
    "Settings",
    "UpstreamDeployment",
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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineOptions(_Frozen):
    """Options of one local llama.cpp engine."""

    ctx_size: Annotated[
        int,
        Field(ge=0),
        flag(
            "-c", "--ctx-size", metavar="N",
            help="total context tokens, shared by the slots (default: parallel x 2048)",
        ),
    ] = 0  # fmt: skip
    threads: Annotated[
        int, Field(ge=0), flag("-t", "--threads", metavar="N", help="CPU threads (default: physical cores)")
    ] = 0
    parallel: Annotated[
        int,
        Field(ge=1, le=256),
        flag("-np", "--parallel", metavar="N", help="sequences decoded together (default: 8)"),
    ] = 8
    batch_size: Annotated[
        int,
        Field(ge=16),
        flag(
            "-b", "--batch-size", metavar="N",
            help="prompt tokens evaluated per step beside running streams (default: 512)",
        ),
    ] = 512  # fmt: skip
    max_queue: Annotated[
        int,
        Field(ge=0),
        flag("--max-queue", metavar="N", help="requests that may wait for a slot before 429 (default: 64)"),
    ] = 64
    cache_type: Annotated[
        Literal["f16", "q8_0", "q4_0"],
        flag(
            "--cache-type", help="KV cache type: q8_0 halves its memory for a few %% of speed (default: f16)"
        ),
    ] = "f16"
    cache_ram: Annotated[
        int,
        Field(ge=0),
        flag(
            "--cache-ram", metavar="MIB",
            help="host RAM for saved prompt KV, restored when a prompt shares its prefix; "
            "0: off (default: 2048)",
        ),
    ] = 2048  # fmt: skip
    # The prompt cache's disk tier (engine/disk_cache.py): states survive restarts.
    cache_disk: Annotated[
        str | None,
        flag(
            "--cache-disk", metavar="DIR",
            help="directory for saved prompt KV that survives restarts (written in the background, "
            "checked against the model and KV settings before reuse; default: off)",
        ),
    ] = None  # fmt: skip
    cache_disk_max: Annotated[
        int,
        Field(ge=0),
        flag(
            "--cache-disk-max", metavar="MIB",
            help="most MiB the disk tier holds per model, least recently used go first (default: 20480)",
        ),
    ] = 20480  # fmt: skip
    request_timeout: Annotated[
        float,
        Field(gt=0),
        flag("--request-timeout", metavar="SECONDS", help="per-request limit (default: 600)"),
    ] = 600.0
    # llama.cpp's repacked weight buffers; None: off on CPUs with AMX (they crash there), on elsewhere.
    repack: Annotated[
        bool | None,
        flag(
            "--repack",
            action="toggle",
            help="let llama.cpp repack weights for this CPU's matrix instructions "
            "(default: off on CPUs with AMX, where it crashes; on elsewhere)",
        ),
    ] = None


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
    # It serves /v1/responses itself: Responses requests go to it untranslated (docs/gateway.md).
    responses: bool = False


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
    # Local deployments only: unload after this many idle seconds (None: model_ttl), never unload if pinned.
    ttl: Annotated[float, Field(ge=0)] | None = None
    pin: bool = False


def _comma_list(value: Any) -> Any:
    """Lists in the environment are comma-separated."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
SecretList = Annotated[tuple[SecretStr, ...], NoDecode, BeforeValidator(_comma_list)]


class Settings(BaseSettings, EngineOptions):
    """Everything ``interference serve`` needs.

    Each field is declared once, here: its TOML key is its name, its environment variable
    ``INTERFERENCE_<NAME>``, and its ``Flag`` (when it has one) its command-line flag.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: Annotated[str, flag("--host", group="server", help="address to listen on (default: 127.0.0.1)")] = (
        "127.0.0.1"
    )
    port: Annotated[
        int, Field(ge=0, le=65535), flag("--port", group="server", help="port to listen on (default: 1337)")
    ] = 1337
    model: Annotated[
        str | None,
        flag("-m", "--model", metavar="GGUF", help="GGUF file to serve (default: the embedded model)"),
    ] = None
    model_name: Annotated[
        str | None, flag("--model-name", metavar="ID", help="public id of that model (default: file name)")
    ] = None
    aliases: Annotated[
        CommaList,
        flag(
            "--alias", action="append", group="common", metavar="NAME",
            help="a name that maps to the default model (repeatable; replaces the default aliases)",
        ),
    ] = DEFAULT_ALIASES  # fmt: skip
    api_keys: Annotated[
        SecretList,
        flag(
            "--api-key", action="append", group="server", metavar="KEY",
            help="require this key (repeatable; default: no auth)",
        ),
    ] = ()  # fmt: skip
    models: tuple[ModelEntry, ...] = ()
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        flag("--log-level", group="server", help="log verbosity (default: info)"),
    ] = "info"
    # The access log: one line per request, as text or as one JSON object; access_log False turns it off.
    log_format: Annotated[
        Literal["text", "json"],
        flag("--log-format", group="server", help="access log format (default: text)"),
    ] = "text"
    access_log: Annotated[
        bool, flag("--no-access-log", action="false", group="server", help="do not log each request")
    ] = True
    # Origins whose pages may call the API from a browser ("*" for any); none sends no CORS headers.
    cors_origins: Annotated[
        CommaList,
        flag(
            "--cors-origin", action="append", group="server", metavar="ORIGIN",
            help="let pages from this origin call the API ('*' for any; repeatable; default: none)",
        ),
    ] = ()  # fmt: skip
    # Local embeddings for /v1/embeddings: on by default with the bundled all-MiniLM-L6-v2;
    # embedding_model is a GGUF file or a sentence-transformers BERT folder instead.
    embeddings: Annotated[
        bool, flag("--no-embeddings", action="false", help="do not load an embedding model")
    ] = True
    embedding_model: Annotated[
        str | None,
        flag(
            "--embedding-model", metavar="PATH",
            help="GGUF file or sentence-transformers BERT folder for /v1/embeddings "
            "(default: all-MiniLM-L6-v2)",
        ),
    ] = None  # fmt: skip
    # Many local models under one memory budget (docs/models.md).
    models_dir: Annotated[
        str | None,
        flag(
            "--models-dir",
            metavar="DIR",
            group="models",
            help="serve every *.gguf in DIR under its file name",
        ),
    ] = None
    memory_budget: Annotated[
        Annotated[int, Field(ge=1)] | str | None,  # str: only "auto" (parse_budget turns the rest)
        BeforeValidator(parse_budget),
        flag(
            "--memory-budget", metavar="SIZE", group="models",
            help="host memory for local models, their KV and the shared prompt cache: MiB, a size "
            "(400MB, 2GiB), off, or auto (default: auto, 75%% of the RAM available at start-up)",
        ),
    ] = "auto"  # fmt: skip
    model_ttl: Annotated[
        float,
        Field(ge=0),
        flag(
            "--model-ttl", metavar="SECONDS", group="models",
            help="unload a model idle this long (default: 0, never)",
        ),
    ] = 0.0  # fmt: skip
    load_timeout: Annotated[
        float,
        Field(gt=0),
        flag(
            "--load-timeout", metavar="SECONDS", group="models",
            help="how long a request waits for its model to load (default: 120)",
        ),
    ] = 120.0  # fmt: skip
    lazy: Annotated[
        bool,
        flag(
            "--lazy", action="true", group="models",
            help="load the default model on its first request, not at start-up",
        ),
    ] = False  # fmt: skip
    # Limits and shutdown (README: "Limits and shutdown").
    max_body_mib: Annotated[
        float,
        Field(gt=0),
        flag(
            "--max-body-mib",
            metavar="MIB",
            group="limits",
            help="largest request body, then 413 (default: 16)",
        ),
    ] = 16.0
    header_timeout: Annotated[
        float,
        Field(gt=0),
        flag(
            "--header-timeout", metavar="SECONDS", group="limits",
            help="close a connection whose request headers are not complete by then (default: 10)",
        ),
    ] = 10.0  # fmt: skip
    shutdown_timeout: Annotated[
        float,
        Field(ge=0),
        flag(
            "--shutdown-timeout", metavar="SECONDS", group="limits",
            help="on SIGTERM/SIGINT, let running streams finish this long (default: 30)",
        ),
    ] = 30.0  # fmt: skip
    embedding_queue: Annotated[
        int,
        Field(ge=0),
        flag(
            "--embedding-queue", metavar="N", group="limits",
            help="embedding requests that may wait for the embedding model before 429 (default: 64)",
        ),
    ] = 64  # fmt: skip
    # Named keys with limits (docs/keys.md); the usage ledger (None: in the user's data dir);
    # where limits are counted: "memory" (this process) or "redis://host:port/db" (shared by replicas).
    keys_file: Annotated[
        str | None,
        flag("--keys-file", metavar="FILE", group="server", help="named keys with limits (docs/keys.md)"),
    ] = None
    usage_db: Annotated[
        str | None,
        flag(
            "--usage-db", metavar="FILE", group="server", help="usage ledger (default: the user's data dir)"
        ),
    ] = None
    # Stored responses (docs/openai-api.md): where, and how many, how large and how old at most.
    responses_db: Annotated[
        str | None,
        flag(
            "--responses-db", metavar="FILE", group="server",
            help="stored responses (default: the user's data dir)",
        ),
    ] = None  # fmt: skip
    responses_max_count: Annotated[
        int,
        Field(ge=0),
        flag(
            "--responses-max-count", metavar="N", group="server",
            help="stored responses kept at most, oldest out first (default: 10000; 0 stores none)",
        ),
    ] = 10_000  # fmt: skip
    responses_max_mib: Annotated[
        float,
        Field(ge=0),
        flag(
            "--responses-max-mib", metavar="MIB", group="server",
            help="bytes of stored responses kept at most (default: 256)",
        ),
    ] = 256.0  # fmt: skip
    responses_max_age: Annotated[
        float,
        Field(gt=0),
        flag(
            "--responses-max-age", metavar="SECONDS", group="server",
            help="a stored response is forgotten this long after it was made (default: 2592000, 30 days)",
        ),
    ] = 30 * 86400.0  # fmt: skip
    limits_backend: Annotated[
        str,
        flag(
            "--limits-backend", metavar="URL", group="server",
            help='where limits are counted: "memory" or redis://host:port/db',
        ),
    ] = "memory"  # fmt: skip
    limits_fail_open: Annotated[
        bool,
        flag(
            "--limits-fail-open", action="toggle", group="server",
            help="serve limited keys unlimited while Redis is unreachable (default: refuse them, 503)",
        ),
    ] = False  # fmt: skip

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
    """Each setting that has a command-line flag, by field name, in declaration order."""
    out: dict[str, Flag] = {}
    for name, info in Settings.model_fields.items():
        found = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if found is not None:
            out[name] = found
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
