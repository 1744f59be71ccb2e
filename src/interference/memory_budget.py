"""The ``--memory-budget`` value: a size with an optional unit, ``off``, or ``auto``.

``auto`` (the default) is ``AUTO_SHARE`` of the memory this process may really use, read once at
start-up: the cgroup limit first (v2 ``/sys/fs/cgroup/memory.max``, then v1
``/sys/fs/cgroup/memory/memory.limit_in_bytes``), else ``MemAvailable`` from ``/proc/meminfo``
(``MemTotal`` where the kernel has no ``MemAvailable``). The share leaves room for the Python process,
the HTTP server and the allocator's slack, which the budget does not count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["AUTO_SHARE", "auto_budget_mib", "available_bytes", "parse_budget", "resolve_budget"]

AUTO_SHARE = 0.75
MIB = 2**20
_CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_NO_LIMIT = 2**60  # cgroup v1 writes a huge number (PAGE_COUNTER_MAX pages) for "no limit"
_UNITS = {
    "": MIB,  # a bare number is MiB
    "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": MIB,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def available_bytes(read: Callable[[str], str | None] = _read) -> int | None:
    """The memory this process may use: its cgroup's limit, else what the kernel reports available."""
    for name in _CGROUP_FILES:
        raw = (read(name) or "").strip()
        if raw.isdigit() and 0 < int(raw) < _NO_LIMIT:
            return int(raw)
    meminfo = read("/proc/meminfo") or ""
    fields = dict(re.findall(r"^(\w+):\s+(\d+)\s*kB", meminfo, flags=re.MULTILINE))
    for key in ("MemAvailable", "MemTotal"):
        if key in fields:
            return int(fields[key]) * 1024
    return None


def auto_budget_mib(read: Callable[[str], str | None] = _read) -> int | None:
    """``AUTO_SHARE`` of ``available_bytes`` in MiB; None (no budget) when nothing could be read."""
    found = available_bytes(read)
    return None if found is None else max(1, int(found * AUTO_SHARE) // MIB)


def parse_budget(value: object) -> object:
    """``--memory-budget``: ``auto``; ``off``/``none`` (no budget); MiB as a number; or a size with a
    unit (``400MB``, ``2GiB``: decimal and binary units). Other values pass to the int check."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text == "auto":
        return "auto"  # resolved once, by ``resolve_budget`` when the server is built
    if text in ("off", "none"):
        return None
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{value!r} is not a size: give MiB (400), a size with a unit (400MB, 2GiB), auto or off"
        )
    return round(float(match.group(1)) * _UNITS[match.group(2).lower()] / MIB)


def resolve_budget(value: int | str | None) -> int | None:
    """The budget in MiB (None: none) from a parsed ``--memory-budget``."""
    return auto_budget_mib() if value == "auto" else (value if isinstance(value, int) else None)
