"""The prompt cache's disk tier: the file store itself, and a real server restarted on the same directory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from test_prompt_cache import _chat as chat

from conftest import RunningServer, running_server
from interference.engine.disk_cache import DiskCache, fingerprint
from interference.settings import load_settings

# ------------------------------------------------------------------ the file store


def _state(n: int, fill: int) -> bytearray:
    return bytearray([fill % 256]) * n


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_states_survive_a_reopen_and_are_checked(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, key="k1", max_bytes=10_000)
    assert cache.submit((1, 2, 3), _state(100, 7), 100)
    assert cache.submit((5, 6), _state(50, 9), 40)  # only the first 40 bytes are the state
    assert cache.close()
    assert cache.covers((1, 2)) and not cache.covers((1, 3))

    again = DiskCache(tmp_path, key="k1", max_bytes=10_000)
    entry, n = again.best((1, 2, 3, 4))
    assert entry is not None and entry.tokens == (1, 2, 3) and n == 3
    assert again.load(entry) == _state(100, 7)
    entry, n = again.best((5, 6, 7))
    assert entry is not None and n == 2 and again.load(entry) == _state(40, 9)
    assert again.best((8,)) == (None, 0)
    assert again.close()

    # Another fingerprint (another model or KV settings) has a directory of its own.
    other = DiskCache(tmp_path, key="k2", max_bytes=10_000)
    assert other.best((1, 2, 3)) == (None, 0)
    assert other.close()


def test_a_longer_state_supersedes_its_prefix(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, key="k", max_bytes=10_000)
    cache.submit((1, 2), _state(20, 1), 20)
    _wait_for(lambda: len(cache) == 1)
    cache.submit((1, 2, 3, 4), _state(40, 2), 40)
    assert cache.close()
    assert len(cache) == 1 and len(list(cache.dir.glob("*.kv"))) == 1
    assert not cache.submit((), _state(1, 1), 1)


def test_damaged_and_partial_files_are_removed(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, key="k", max_bytes=10_000)
    cache.submit((1, 2, 3), _state(100, 7), 100)
    cache.submit((4, 5, 6), _state(100, 8), 100)
    assert cache.close()
    first, second = sorted(cache.dir.glob("*.kv"))
    data = bytearray(first.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the state: the header still parses, the CRC does not match
    first.write_bytes(data)
    second.write_bytes(second.read_bytes()[:-5])  # cut short: its size is wrong
    (cache.dir / "x.kv.tmp").write_bytes(b"half a write")  # a crash mid-write
    (cache.dir / "junk.kv").write_bytes(b"not a state file")

    again = DiskCache(tmp_path, key="k", max_bytes=10_000)
    assert len(again) == 1 and again.bad_files == 2
    assert not (again.dir / "x.kv.tmp").exists() and not second.exists()
    entry, _ = again.best((1, 2, 3))
    assert entry is not None and again.load(entry) is None  # the flipped bit is found on reading
    assert not first.exists() and len(again) == 0
    assert again.close()


def test_the_byte_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, key="k", max_bytes=1000)
    for i in range(3):
        cache.submit((i + 1,), _state(300, i), 300)
    assert cache.close()
    assert cache.bytes_held <= 1000 and len(cache) == 2 and cache.evictions == 1
    assert cache.best((1,)) == (None, 0)  # the oldest went
    assert not cache.has_room(1001) and not cache.fits(1001) and cache.fits(1000)

    again = DiskCache(tmp_path, key="k", max_bytes=1000)
    entry, _ = again.best((2,))
    assert entry is not None and again.load(entry) is not None  # (2,) is now the most recently used
    again.submit((4,), _state(300, 4), 300)
    assert again.close()
    assert [again.best((t,))[1] for t in (2, 3, 4)] == [1, 0, 1]


def test_fingerprint_follows_the_model_file_and_settings(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(16))
    base = fingerprint(model, {"n_ctx": 4096, "type_k": 1})
    assert base == fingerprint(model, {"n_ctx": 4096, "type_k": 1})
    assert base != fingerprint(model, {"n_ctx": 8192, "type_k": 1})
    assert base != fingerprint(model, {"n_ctx": 4096, "type_k": 8})
    model.write_bytes(b"GGUF" + bytes(17))
    assert base != fingerprint(model, {"n_ctx": 4096, "type_k": 1})


def test_settings_come_from_flags_env_and_toml(tmp_path: Path) -> None:
    assert load_settings(env={}).cache_disk is None and load_settings(env={}).cache_disk_max == 20480
    toml = tmp_path / "c.toml"
    toml.write_text('cache_disk = "/srv/kv"\ncache_disk_max = 100\n')
    from_file = load_settings(env={}, config_file=toml)
    assert (from_file.cache_disk, from_file.cache_disk_max) == ("/srv/kv", 100)
    env = {"INTERFERENCE_CACHE_DISK": "/env/kv", "INTERFERENCE_CACHE_DISK_MAX": "5"}
    from_env = load_settings(env=env, config_file=toml)
    assert (from_env.cache_disk, from_env.cache_disk_max) == ("/env/kv", 5)
    assert load_settings({"cache_disk": "/cli/kv"}, env=env).engine_options.cache_disk == "/cli/kv"


# ------------------------------------------------------------------ a restarted server


def _chat(server: RunningServer, messages: list[dict[str, str]]) -> dict[str, Any]:
    return chat(server, messages, max_tokens=12)


def _conversation(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are assistant {i}. " + "Answer in short, plain sentences. " * 12},
        {"role": "user", "content": f"Tell me fact number {i} about rivers and lakes."},
    ]


def _cached(result: dict[str, Any]) -> int:
    return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.kv"))


def test_a_restarted_server_restores_a_known_prefix(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    args = ("--parallel", "2", "--cache-disk", str(root))
    conv = _conversation(1)
    with running_server(*args, tmp=tmp_path) as s:
        assert _cached(_chat(s, conv)) < 10  # cold
        warm = _chat(s, conv)  # from the live slot
        n_prompt = warm["usage"]["prompt_tokens"]
        assert _cached(warm) == n_prompt - 1
        _wait_for(lambda: len(_files(root)) >= 1)  # written while the engine is idle
    assert not list(root.glob("*/*.tmp"))

    with running_server(*args, tmp=tmp_path) as s:
        restored = _chat(s, conv)
        assert _cached(restored) == n_prompt - 1
        # The same KV bits as the live slot's: the same greedy answer.
        assert restored["choices"][0]["message"]["content"] == warm["choices"][0]["message"]["content"]
        assert restored["choices"][0]["finish_reason"] == warm["choices"][0]["finish_reason"]
        # A longer conversation starting with it reuses the saved prefix too.
        longer = [*conv, warm["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        assert _cached(_chat(s, longer)) >= n_prompt - 8
        metrics = httpx.get(f"{s.url}/metrics", timeout=30).text
        hits = [
            line
            for line in metrics.splitlines()
            if line.startswith("interference_engine_prompt_cache_disk_hits")
        ]
        assert hits and float(hits[0].split()[-1]) >= 1, hits
        assert "interference_engine_prompt_cache_disk_bytes" in metrics

    # Damage every file: the server starts, ignores (removes) them and prefills.
    for path in _files(root):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)
    (_files(root)[0].parent / "partial.kv.tmp").write_bytes(b"cut short")
    with running_server(*args, tmp=tmp_path) as s:
        again = _chat(s, conv)
        assert _cached(again) < 10
        assert again["choices"][0]["finish_reason"] in ("stop", "length")
    assert not list(root.glob("*/*.tmp"))


def test_other_kv_settings_do_not_reuse_the_files(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    conv = _conversation(2)
    with running_server("--parallel", "1", "--cache-disk", str(root), tmp=tmp_path) as s:
        _chat(s, conv)
        _wait_for(lambda: len(_files(root)) >= 1)
    args = ("--parallel", "1", "--cache-disk", str(root))
    with running_server(*args, "--cache-type", "q8_0", tmp=tmp_path) as s:
        assert _cached(_chat(s, conv)) < 10
    assert len({p.parent for p in _files(root)}) == 2  # one directory per fingerprint


def test_the_disk_bound_evicts(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    with running_server("--parallel", "1", "--cache-disk", str(root), tmp=tmp_path) as s:
        _chat(s, _conversation(3))
        _wait_for(lambda: len(_files(root)) >= 1)
    size = _files(root)[0].stat().st_size
    bound = math.ceil(1.5 * size / 2**20)  # MiB: room for one such state, not two
    args = ("--parallel", "1", "--cache-disk", str(root), "--cache-disk-max", str(bound))
    with running_server(*args, env={"INTERFERENCE_CACHE_RAM": "0"}, tmp=tmp_path) as s:
        for i in (4, 5, 6):
            _chat(s, _conversation(i))
    files = _files(root)
    assert sum(p.stat().st_size for p in files) <= bound * 2**20
    assert len(files) == 1
