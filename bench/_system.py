"""Machine facts for the benchmarks: CPU/memory info, RSS, foreign CPU load (via /proc)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU, memory and software versions of the machine running the benchmark."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    try:
        lcp = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        lcp = None
    return {
        "cpu": cpu,
        "cpus_visible": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "llama_cpp_python": lcp,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def _tree_ticks(pids: list[int]) -> int:
    """utime+stime (clock ticks) of ``pids`` and all their descendants."""
    ticks = 0
    for pid in {q for p in pids for q in (p, *_children(p))}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks


class ForeignLoad:
    """Share of the machine's CPU used by processes other than ``pids`` (and us)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.total, self.idle = _cpu_times()
        self.ours = _tree_ticks(self.pids)

    def fraction(self) -> float:
        total, idle = _cpu_times()
        span = max(total - self.total, 1)
        busy = span - (idle - self.idle)
        return max(0.0, (busy - (_tree_ticks(self.pids) - self.ours)) / span)


def cpu_busy(interval: float = 2.0) -> float:
    """Share of all CPUs used over ``interval`` s by processes other than us and our children."""
    probe = ForeignLoad([])
    time.sleep(interval)
    return probe.fraction()


def wait_until_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) until other load drops below ``threshold``; return it.

    On a small shared machine, foreign load ruins decode timings: llama.cpp's
    worker threads synchronise on every token, so one busy core stalls them all.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"other processes use {busy:.0%} of the CPU, waiting...", file=sys.stderr)
        time.sleep(5)
        busy = cpu_busy()
    if busy > threshold:
        print(f"warning: other processes use {busy:.0%} of the CPU", file=sys.stderr)
    return busy


def idle_cpu_cores(pid: int, seconds: float = 3.0) -> float:
    """CPU used by ``pid``'s process tree while left alone for ``seconds`` (in cores)."""
    before = _tree_ticks([pid])
    time.sleep(seconds)
    return (_tree_ticks([pid]) - before) / os.sysconf("SC_CLK_TCK") / seconds


def _children(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (via /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of ``pid`` plus its descendants, in MiB."""
    total_kb = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """Nanoseconds on a CPU so far, per thread of ``pid`` (empty where /proc has no schedstat)."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return out
