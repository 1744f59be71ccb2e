"""The memory budget's parts that need no server: ``--memory-budget`` values, the auto share read from
cgroup v2, cgroup v1 or /proc/meminfo, the prompt cache pool all local engines share, and the model
pool's idle sweep."""

from __future__ import annotations

import asyncio
import threading

import pytest

from interference.engine.cache_pool import PromptCachePool
from interference.engine.prompt_cache import PromptCache
from interference.memory_budget import AUTO_SHARE, auto_budget_mib, available_bytes, resolve_budget
from interference.providers.model_pool import TTL_SWEEP, ModelPool
from interference.settings import Settings

MIB = 2**20
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


def _files(**contents: str) -> dict[str, str]:
    names = {
        "v2": "/sys/fs/cgroup/memory.max",
        "v1": "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "meminfo": "/proc/meminfo",
    }
    return {names[k]: v for k, v in contents.items()}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (_files(v2=f"{4096 * MIB}\n", v1=f"{1024 * MIB}\n", meminfo=MEMINFO), 4096 * MIB),  # v2 first
        (_files(v2="max\n", v1=f"{1024 * MIB}\n", meminfo=MEMINFO), 1024 * MIB),  # v2 unlimited: v1
        (_files(v1="9223372036854771712\n", meminfo=MEMINFO), 8000000 * 1024),  # v1 unlimited: available
        (_files(meminfo=MEMINFO), 8000000 * 1024),  # no cgroup: MemAvailable
        (_files(meminfo="MemTotal:       16000000 kB\n"), 16000000 * 1024),  # an old kernel: MemTotal
        ({}, None),  # nothing readable
    ],
)
def test_the_auto_budget_reads_the_cgroup_limit_first(files: dict[str, str], expected: int | None) -> None:
    assert available_bytes(files.get) == expected
    share = None if expected is None else int(expected * AUTO_SHARE) // MIB
    assert auto_budget_mib(files.get) == share


def test_budget_values_take_mib_units_auto_and_off() -> None:
    assert Settings(memory_budget="400").memory_budget == 400
    assert Settings(memory_budget="400MB").memory_budget == 381  # 400 x 10^6 bytes
    assert Settings(memory_budget="400MiB").memory_budget == 400
    assert Settings(memory_budget="2GiB").memory_budget == 2048
    assert Settings(memory_budget="off").memory_budget is None
    assert Settings().memory_budget == "auto"
    assert resolve_budget("auto") == auto_budget_mib()
    for bad in ("0", "lots", "-5MB", "12XB"):
        with pytest.raises(ValueError, match="memory_budget"):
            Settings(memory_budget=bad)


def _fill(cache: PromptCache, first_token: int, n: int, size: int) -> None:
    for i in range(n):
        state = cache.buffer(size)
        assert state is not None
        assert cache.put([first_token + i, 1, 2], state)


def test_the_shared_cache_holds_its_limit_across_engines_and_gives_back_the_oldest_first() -> None:
    pool = PromptCachePool(10 * MIB)
    a, b = PromptCache(8 * MIB, pool=pool), PromptCache(8 * MIB, pool=pool)
    _fill(a, 100, 4, MIB)  # a: four entries, the oldest of all
    _fill(b, 200, 4, MIB)
    assert pool.held() == 8 * MIB
    _fill(b, 300, 4, MIB)  # b may grow only into what a leaves: it evicts its own oldest
    assert pool.held() <= 10 * MIB and a.bytes_held == 4 * MIB
    a.best([103, 1, 2])  # a's newest entry is used again

    freed = pool.set_limit(5 * MIB)  # a model needs room: the cache gives back, oldest first
    assert freed > 0 and pool.held() <= 5 * MIB and pool.released == freed
    assert a.best([103, 1, 2])[1] == 3  # the entry used last stays
    assert a.best([100, 1, 2])[1] == 0  # a's oldest went
    pool.set_limit(20 * MIB)
    assert pool.limit == 10 * MIB  # never above --cache-ram


def test_the_shared_cache_is_safe_to_shrink_while_engines_save() -> None:
    pool = PromptCachePool(64 * MIB)
    caches = [PromptCache(64 * MIB, pool=pool) for _ in range(3)]

    def save(cache: PromptCache, base: int) -> None:
        for i in range(200):
            state = cache.buffer(MIB // 4)
            if state is not None:
                cache.put([base + i, 7], state)

    threads = [threading.Thread(target=save, args=(c, 1000 * n)) for n, c in enumerate(caches)]
    for t in threads:
        t.start()
    for limit in range(64, 0, -4):
        pool.set_limit(limit * MIB)
    for t in threads:
        t.join()
    pool.set_limit(2 * MIB)
    assert pool.held() <= 2 * MIB
    assert all(c.bytes_held >= 0 for c in caches)


class _Member:
    """A pool member that only records its idle unloads."""

    def __init__(self, ttl: float) -> None:
        self.model_id, self.memory_mib, self.ttl, self.last_used = "m", 1, ttl, 0.0
        self.unloads: list[str] = []

    is_evictable = True

    async def unload_idle(self, *, reason: str) -> None:
        self.unloads.append(reason)


def test_the_idle_sweep_sleeps_until_a_model_with_a_ttl_joins() -> None:
    """With no model that unloads on its own (the default --model-ttl 0) the sweep does not wake at
    all; once one with a TTL is registered, it unloads after that TTL."""

    async def scenario() -> tuple[int, list[str]]:
        reads = 0

        def clock() -> float:
            nonlocal reads
            reads += 1
            return 100.0

        pool = ModelPool(budget_mib=None, load_timeout=1.0, clock=clock)
        pool.register(_Member(ttl=0))  # type: ignore[arg-type]
        pool.start()
        await asyncio.sleep(TTL_SWEEP * 3)
        quiet = reads  # three sweep periods with no TTL anywhere: the sweep never looked
        timed = _Member(ttl=5)
        pool.register(timed)  # type: ignore[arg-type]
        for _ in range(40):
            if timed.unloads:
                break
            await asyncio.sleep(TTL_SWEEP / 4)
        await pool.aclose()
        return quiet, timed.unloads

    quiet, unloads = asyncio.run(scenario())
    assert quiet == 0
    assert unloads == ["ttl"]  # idle since 0.0, now 100.0: past its 5 s
