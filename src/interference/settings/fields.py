"""How a setting is declared: its command-line ``Flag``, and the value types settings share.

``cli.py`` builds its parser from the ``Flag`` on each ``Settings`` field, with the docstring under the
field as the flag's help; the shared ``Annotated`` types carry the bounds, so a field states its unit
once instead of repeating a ``Field(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic_settings import NoDecode

__all__ = [
    "Count",
    "Flag",
    "Frozen",
    "Interval",
    "List",
    "Positive",
    "Seconds",
    "Secrets",
    "flag",
]

Action = Literal["store", "append", "true", "false", "toggle"]
Group = Literal["server", "common", "engine", "models", "limits"]


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting appears on the command line (``cli.py`` builds its parser from these).

    ``help`` is empty where the flag is declared: ``setting_flags`` fills it from the field's docstring.

    ``action``: ``store`` takes a value (its type and choices come from the field), ``append`` may repeat,
    ``true``/``false`` set the value without one, ``toggle`` is ``--x/--no-x``. ``server`` and ``limits``
    flags belong to ``serve`` only; the others to ``models`` too.
    """

    names: tuple[str, ...]
    help: str = ""
    metavar: str | None = None
    action: Action = "store"
    group: Group = "engine"


def flag(*names: str, metavar: str | None = None, action: Action = "store", group: Group = "engine") -> Flag:
    return Flag(names=names, metavar=metavar, action=action, group=group)


class Frozen(BaseModel):
    """A settings model: immutable, and an unknown key is an error (a typo must not pass silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _comma_list(value: Any) -> Any:
    """Lists in the environment are comma-separated."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# The bounds settings share: a count of things (0 allowed), a duration or size that must be positive,
# an interval that may be 0 (off).
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Seconds = Positive
Interval = Annotated[float, Field(ge=0)]
List = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
Secrets = Annotated[tuple[SecretStr, ...], NoDecode, BeforeValidator(_comma_list)]
