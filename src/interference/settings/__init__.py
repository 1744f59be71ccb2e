"""Settings: what ``interference serve`` is told, from flags, ``INTERFERENCE_*``, a TOML file and defaults.

- ``sources``: the ``Settings`` model and where its values come from (``load_settings``);
- ``gateway``: the gateway file's schema, ``[[models]]`` and their deployments;
- ``engine``: ``EngineOptions``, what one local engine is built with;
- ``fields``: how a setting is declared (its ``Flag``, the bounds settings share).
"""

from __future__ import annotations

from .engine import EngineOptions
from .fields import Flag
from .gateway import (
    AnthropicDeployment,
    LocalDeployment,
    ModelEntry,
    OpenAIDeployment,
    UpstreamDeployment,
)
from .sources import CLAUDE_ALIASES, DEFAULT_ALIASES, ConfigError, Settings, load_settings, setting_flags

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
