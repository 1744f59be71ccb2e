"""How a setting appears on the command line: declared on its field in ``config.py``, read by ``cli.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Flag", "flag"]

Action = Literal["store", "append", "true", "false", "toggle"]
Group = Literal["server", "common", "engine", "models", "limits"]


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting appears on the command line (``cli.py`` builds its parser from these).

    ``action``: ``store`` takes a value (its type and choices come from the field), ``append`` may repeat,
    ``true``/``false`` set the value without one, ``toggle`` is ``--x/--no-x``. ``server`` and ``limits``
    flags belong to ``serve`` only; the others to ``models`` too.
    """

    names: tuple[str, ...]
    help: str
    metavar: str | None = None
    action: Action = "store"
    group: Group = "engine"


def flag(
    *names: str, help: str, metavar: str | None = None, action: Action = "store", group: Group = "engine"
) -> Flag:
    return Flag(names=names, help=help, metavar=metavar, action=action, group=group)
