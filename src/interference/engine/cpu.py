"""What the CPU can do, as far as llama.cpp's weight layout is concerned.

llama.cpp may place weights in "extra buffer types" that repack them for a CPU's matrix
instructions. On CPUs with AMX (Intel Xeon since Sapphire Rapids: ``amx_int8``/``amx_tile`` in
``/proc/cpuinfo``) the AMX buffer's matmul crashes on the first decode (llama.cpp #20824, closed
unfixed; llama-server needs ``--no-repack`` there). So extra buffer types are off on AMX CPUs and
on elsewhere, unless the settings say otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AMX_FLAGS", "CpuInfo", "RepackChoice", "choose_repack", "parse_cpu_flags", "read_cpu_info"]

AMX_FLAGS = frozenset({"amx_int8", "amx_tile", "amx_bf16", "amx_fp16", "amx_complex"})
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def has_amx(self) -> bool:
        return not self.flags.isdisjoint(AMX_FLAGS)


@dataclass(frozen=True, slots=True)
class RepackChoice:
    """Whether llama.cpp may repack weights into extra buffer types, and why."""

    enabled: bool
    reason: str


def parse_cpu_flags(text: str) -> CpuInfo:
    """The flags and model name of the first processor in ``/proc/cpuinfo`` contents (x86 ``flags``,
    Arm ``Features``); empty when the text has neither."""
    flags: Iterable[str] = ()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = value.split()
        elif key == "model name" and not model:
            model = value.strip()
    return CpuInfo(model=model, flags=frozenset(flags))


def read_cpu_info(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU (no flags when ``/proc/cpuinfo`` cannot be read)."""
    try:
        return parse_cpu_flags(path.read_text(errors="replace"))
    except OSError:
        return CpuInfo(model="", flags=frozenset())


def choose_repack(setting: bool | None, cpu: CpuInfo) -> RepackChoice:
    """``setting`` (``--repack`` / ``--no-repack``) wins; otherwise off on AMX CPUs, on elsewhere."""
    if setting is not None:
        return RepackChoice(setting, "--repack" if setting else "--no-repack")
    if cpu.has_amx:
        return RepackChoice(False, "off: this CPU has AMX (llama.cpp #20824)")
    return RepackChoice(True, "on: no AMX on this CPU")
