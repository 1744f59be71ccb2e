"""The host-RAM prompt cache: its data structure, llama.cpp state round trips, and the real server."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import RunningServer, running_server
from interference.cli import build_parser
from interference.engine._llama import LlamaRuntime
from interference.engine.cpu import choose_repack, read_cpu_info
from interference.engine.engine import embedded_model_path
from interference.engine.prompt_cache import MAX_SPARES, PromptCache
from interference.settings import ConfigError, LocalDeployment, load_settings

# ------------------------------------------------------------------ the data structure


def _state(n: int) -> bytearray:
    return bytearray(n)


def test_best_is_the_longest_common_prefix() -> None:
    cache = PromptCache(1000)
    cache.put((1, 2, 3, 4), _state(10))
    cache.put((1, 2, 9, 9, 9), _state(10))
    cache.put((5, 6), _state(10))
    entry, n = cache.best((1, 2, 3, 4, 5, 6))
    assert entry is not None and entry.tokens == (1, 2, 3, 4) and n == 4
    entry, n = cache.best((1, 2, 9, 7))
    assert entry is not None and entry.tokens == (1, 2, 9, 9, 9) and n == 3
    assert cache.best((7, 7)) == (None, 0)
    assert PromptCache(10).best((1,)) == (None, 0)


def test_a_prefix_of_another_entry_is_not_stored_twice() -> None:
    cache = PromptCache(1000)
    assert cache.put((1, 2, 3), _state(30))
    assert cache.put((1, 2, 3, 4, 5), _state(50))  # supersedes (1, 2, 3)
    assert [e.tokens for e in cache.entries()] == [(1, 2, 3, 4, 5)]
    assert cache.bytes_held == 50 + 30 and cache.spare_bytes == 30  # the superseded buffer is a spare
    assert not cache.put((1, 2, 3), _state(30))  # the longer entry holds it already
    assert not cache.put((1, 2, 3, 4, 5), _state(50))
    assert cache.covers((1, 2)) and not cache.covers((1, 2, 4))
    assert len(cache) == 1 and cache.evictions == 0


def test_eviction_is_least_recently_used_and_keeps_within_the_budget() -> None:
    cache = PromptCache(100)
    cache.put((1,), _state(40))
    cache.put((2,), _state(40))
    cache.best((1, 5))  # (1,) becomes the most recently used
    cache.put((3,), _state(40))
    assert [e.tokens for e in cache.entries()] == [(1,), (3,)]
    assert cache.evictions == 1 and cache.bytes_held == 80
    assert not cache.put((4,), _state(101))  # larger than the whole budget
    assert cache.bytes_held == 80

    rng = random.Random(7)
    cache = PromptCache(10_000)
    for _ in range(2000):
        tokens = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 8)))
        cache.put(tokens, _state(rng.randrange(1, 3000)))
        assert cache.bytes_held == sum(e.size for e in cache.entries()) + cache.spare_bytes <= cache.budget
    assert cache.evictions > 0


def test_buffers_are_recycled_within_the_budget() -> None:
    cache = PromptCache(100)
    first = cache.buffer(30)
    assert first is not None and len(first) == 30 and cache.bytes_held == 0  # not counted until put
    assert cache.put((1, 2), first, 28)
    entry, n = cache.best((1, 2, 3))
    assert entry is not None and entry.state is first and entry.length == 28 and n == 2
    cache.discard(entry)  # restored into a slot: its buffer waits for the next save
    assert len(cache) == 0 and cache.spare_bytes == 30 and cache.bytes_held == 30
    assert cache.buffer(20) is first  # the smallest spare large enough
    assert cache.bytes_held == 0
    cache.put((5,), first, 20)
    # Full: making room evicts the least recently used entry, and its buffer is reused.
    cache.put((6,), bytearray(70))
    assert cache.bytes_held == 100
    entry_6 = cache.entries()[-1]
    again = cache.buffer(25)
    assert again is first and [e.tokens for e in cache.entries()] == [(6,)] and cache.evictions == 1
    # The entry about to be restored is never evicted for a save.
    cache.give_back(again)
    assert cache.buffer(90, keep=entry_6) is None and cache.entries() == [entry_6]
    assert cache.buffer(101) is None
    assert cache.bytes_held == sum(e.size for e in cache.entries()) + cache.spare_bytes <= cache.budget

    rng = random.Random(11)
    cache = PromptCache(10_000)
    for _ in range(3000):
        tokens = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 8)))
        op = rng.random()
        if op < 0.6:
            keep = rng.choice(cache.entries()) if len(cache) and rng.random() < 0.3 else None
            size = rng.randrange(1, 3000)
            buf = cache.buffer(size, keep=keep)
            if keep is not None:
                assert buf is not keep.state and keep in cache.entries()  # about to be restored
            if buf is not None:
                if len(buf) < size:
                    buf += bytes(size - len(buf))  # what a save into a smaller spare does
                cache.put(tokens, buf, size)
        elif op < 0.8:
            entry, _ = cache.best(tokens)
            if entry is not None:
                cache.discard(entry)
        else:
            cache.put(tokens, bytearray(rng.randrange(1, 3000)))
        assert cache.bytes_held == sum(e.size for e in cache.entries()) + cache.spare_bytes <= cache.budget
        assert all(e.length <= e.size for e in cache.entries()) and cache.spare_count <= MAX_SPARES


def test_discard_and_clear() -> None:
    cache = PromptCache(100)
    cache.put((1, 2), _state(10))
    entry, _ = cache.best((1, 2))
    assert entry is not None
    cache.discard(entry)
    cache.discard(entry)  # a no-op the second time
    assert len(cache) == 0 and cache.bytes_held == cache.spare_bytes == 10  # kept for the next save
    cache.put((3,), _state(10))
    cache.clear()
    assert len(cache) == 0 and cache.bytes_held == 0


# ------------------------------------------------------------------ settings


def test_cache_ram_setting_from_flag_env_file_and_deployment(tmp_path: Any) -> None:
    assert load_settings({}, env={}).cache_ram == 2048
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'cache_ram = 100\n[[models]]\nname = "m"\n[[models.deployments]]\ntype = "local"\ncache_ram = 0\n'
    )
    s = load_settings({}, env={}, config_file=cfg)
    assert s.cache_ram == 100 and s.engine_options.cache_ram == 100
    deployment = s.models[0].deployments[0]
    assert isinstance(deployment, LocalDeployment) and deployment.cache_ram == 0
    assert load_settings({}, env={"INTERFERENCE_CACHE_RAM": "64"}, config_file=cfg).cache_ram == 64
    args = build_parser().parse_args(["serve", "--cache-ram", "7"])
    assert load_settings({"cache_ram": args.cache_ram}, env={"INTERFERENCE_CACHE_RAM": "64"}).cache_ram == 7
    with pytest.raises(ConfigError, match="'cache_ram'"):
        load_settings({"cache_ram": -1}, env={})


# ------------------------------------------------------------------ llama.cpp sequence state


def test_save_restore_save_gives_the_same_bytes() -> None:
    repack = choose_repack(None, read_cpu_info()).enabled  # as the server decides: off on AMX CPUs
    rt = LlamaRuntime(embedded_model_path(), n_ctx=2 * 512, n_seq=2, n_batch=512, n_threads=2, repack=repack)
    try:
        tokens = rt.tokenize("The quick brown fox jumps over the lazy dog. " * 6, add_special=False)
        for i, tok in enumerate(tokens):
            rt.batch_add(tok, i, 0, logits=i == len(tokens) - 1)
        assert rt.decode() == 0
        saved, n = rt.state_save(0)
        assert n == len(saved) == rt.state_size(0) > 1000 * len(tokens)  # KB per token: real KV
        rt.seq_clear(0)
        assert rt.state_restore(0, saved)
        again, m = rt.state_save(0)
        assert m == n and again == saved
        assert rt.state_restore(1, saved)  # into another sequence
        in_seq1, m = rt.state_save(1)
        assert m == n
        # Into a recycled buffer: a longer one keeps its tail, a shorter one grows.
        longer = bytearray(b"\xff") * (n + 4096)
        into, m = rt.state_save(0, into=longer)
        assert into is longer and m == n and longer[:n] == saved and longer[n:] == b"\xff" * 4096
        assert rt.state_restore(1, longer, n)
        into, m = rt.state_save(1, into=bytearray(10))
        assert m == n and into[:n] == in_seq1
        assert not rt.state_restore(1, bytearray(b"not a state"))
        assert not rt.state_restore(1, saved, 0)
    finally:
        rt.close()


# ------------------------------------------------------------------ the server


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _chat(server: RunningServer, messages: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o", "messages": messages, "max_tokens": 8, "temperature": 0, **fields}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _conversation(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are assistant {i}. " + "Answer in short sentences. " * 4},
        {"role": "user", "content": f"Tell me fact number {i} about rivers and lakes."},
    ]


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One slot, a prompt cache of 6 MiB (a few short prompts' worth: about 23 KB per token)."""
    with running_server("--parallel", "1", "--cache-ram", "6", tmp=tmp_path_factory.mktemp("pc")) as s:
        yield s


def test_cache_answer_equals_live_slot_answer(one_slot: RunningServer) -> None:
    conv, other = _conversation(1), _conversation(2)
    _chat(one_slot, conv)  # cold: the slot now holds the prompt
    live = _chat(one_slot, conv)  # served from the live slot
    n_prompt = live["usage"]["prompt_tokens"]
    assert live["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
    before = one_slot.metrics()
    _chat(one_slot, other)  # overwrites the only slot: conv is saved to the cache first
    cached = _chat(one_slot, conv)  # restored from the cache
    after = one_slot.metrics()
    assert cached["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
    assert cached["choices"][0]["finish_reason"] == live["choices"][0]["finish_reason"]
    # cached_tokens counts the restored tokens; one is always evaluated again for its logits.
    assert cached["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
    hits = "interference_engine_prompt_cache_hits_total"
    assert after[hits] == before[hits] + 1
    restored = "interference_engine_prompt_cache_restored_tokens_total"
    assert after[restored] - before[restored] == n_prompt - 1
    saves = "interference_engine_prompt_cache_saves_total"
    assert after[saves] > before[saves]


def test_eviction_keeps_within_the_budget(one_slot: RunningServer) -> None:
    for i in range(10, 17):
        _chat(one_slot, _conversation(i))
        m = one_slot.metrics()
        assert m["interference_engine_prompt_cache_bytes"] <= 6 * 2**20
    m = one_slot.metrics()
    assert m["interference_engine_prompt_cache_evictions_total"] >= 1
    assert m["interference_engine_prompt_cache_entries"] >= 1


def test_cancelling_during_a_restore_frees_everything(one_slot: RunningServer) -> None:
    conv = _conversation(30)
    _chat(one_slot, conv)
    reference = _chat(one_slot, conv)  # from the live slot: the same KV bits a restore brings back
    _chat(one_slot, _conversation(31))  # conv goes to the cache
    body = {"model": "gpt-4o", "messages": conv, "max_tokens": 8, "temperature": 0, "stream": True}
    hits = one_slot.metrics()["interference_engine_prompt_cache_hits_total"]
    for _ in range(3):
        # The request is admitted (and restored) while the client is already gone.
        url = f"{one_slot.url}/v1/chat/completions"
        with httpx.Client(timeout=60) as c, c.stream("POST", url, json=body):
            pass
        _chat(one_slot, _conversation(31))  # push conv back out to the cache, whatever happened
    _wait_for(lambda: one_slot.metrics()["interference_engine_slots_active"] == 0)
    m = one_slot.metrics()
    assert m["interference_engine_requests_waiting"] == 0
    again = _chat(one_slot, conv)
    assert one_slot.metrics()["interference_engine_prompt_cache_hits_total"] > hits
    assert again["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1


def test_cache_ram_zero_turns_it_off(tmp_path: Any) -> None:
    with running_server("--parallel", "1", "--cache-ram", "0", tmp=tmp_path) as s:
        conv = _conversation(40)
        _chat(s, conv)
        _chat(s, _conversation(41))
        again = _chat(s, conv)
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] < 10  # only the template's start
        m = s.metrics()
        assert m["interference_engine_prompt_cache_hits_total"] == 0
        assert m["interference_engine_prompt_cache_bytes"] == 0


def test_six_conversations_over_two_slots(tmp_path: Any) -> None:
    with running_server("--parallel", "2", "--log-level", "debug", tmp=tmp_path) as s:
        histories = [_conversation(50 + i) for i in range(6)]
        previous = [0] * 6
        for turn in range(3):
            for i, messages in enumerate(histories):
                if turn:
                    messages.append({"role": "user", "content": f"And what about turn {turn}?"})
                result = _chat(s, messages)
                usage = result["usage"]
                assert result["choices"][0]["finish_reason"] in ("stop", "length")
                if turn:
                    # The whole previous turn is reused (restored from the cache: only two slots),
                    # except the tail that the template renders differently once it is history.
                    assert usage["prompt_tokens_details"]["cached_tokens"] >= previous[i] - 8, (turn, i)
                previous[i] = usage["prompt_tokens"]
                messages.append({"role": "assistant", "content": result["choices"][0]["message"]["content"]})
        m = s.metrics()
        assert m["interference_engine_prompt_cache_hits_total"] >= 2 * 6 - 2
        assert m["interference_engine_prompt_cache_bytes"] > 0
        assert "prompt cache hit" in s.log


def test_n_choices_share_one_prompt_prefill(tmp_path: Any) -> None:
    with running_server("--parallel", "3", tmp=tmp_path) as s:
        conv = _conversation(70)
        result = _chat(s, conv, n=3)
        texts = [c["message"]["content"] for c in result["choices"]]
        assert len(texts) == 3 and len(set(texts)) == 1  # temperature 0: the same answer three times
        m = s.metrics()
        n_prompt = result["usage"]["prompt_tokens"]
        # Two choices got the prompt by copy; the third prefilled it.
        assert m["interference_engine_shared_prompt_tokens_total"] >= 2 * (n_prompt - 1)
        # More choices than slots, and sampled ones: every choice completes.
        result = _chat(s, _conversation(71), n=5, temperature=1.0, seed=3)
        assert sorted(c["index"] for c in result["choices"]) == [0, 1, 2, 3, 4]
        assert all(c["finish_reason"] in ("stop", "length") for c in result["choices"])
        # Cancelling an n > 1 stream while its choices wait for the shared prompt frees every slot.
        body = {"model": "gpt-4o", "messages": _conversation(72), "n": 3, "stream": True, "max_tokens": 64}
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{s.url}/v1/chat/completions", json=body):
            pass
        _wait_for(lambda: s.metrics()["interference_engine_slots_active"] == 0)
        again = _chat(s, conv, n=2)
        # From the cache the prompt's logits differ in the last bits, and the slots' shared KV pool makes
        # them depend on the batch (bench/README.md, "Determinism"): the answers start the same.
        answers = [c["message"]["content"] for c in again["choices"]]
        assert len(answers) == 2 and all(a.split()[:2] == texts[0].split()[:2] for a in answers)


def test_sessions_that_outgrow_the_kv_pool_are_restored_whole(tmp_path: Any) -> None:
    """Three agent-like sessions sharing a long preamble in a pool too small for all of them: a
    session's state restored from the cache needs a run of free cells that idle slots hold, and they
    give theirs back (saved first) instead of the turn being prefilled from nothing."""
    words = " ".join(f"rule{i} keeps the build green" for i in range(120))  # about 900 tokens
    with running_server("--parallel", "4", "--ctx-size", "2560", tmp=tmp_path) as s:
        sessions = [
            [
                {"role": "system", "content": f"You are a coding agent. {words} Session {k}."},
                {"role": "user", "content": f"Task {k}: list the rules."},
            ]
            for k in range(3)
        ]
        previous = [0] * 3
        for turn in range(3):
            for k, messages in enumerate(sessions):
                result = _chat(s, messages, max_tokens=8)
                usage = result["usage"]
                if turn:
                    assert usage["prompt_tokens_details"]["cached_tokens"] >= previous[k] - 8, (turn, k)
                previous[k] = usage["prompt_tokens"]
                messages.append({"role": "assistant", "content": result["choices"][0]["message"]["content"]})
                messages.append({"role": "user", "content": f"Tool result {turn}: ok."})


def test_idle_slots_the_cache_holds_give_their_cells_back(tmp_path: Any) -> None:
    """A new conversation's prefill and decode attend over the pool up to its highest cell in use: idle
    slots whose KV the cache holds already give their cells back, and come back whole from the cache."""
    with running_server("--parallel", "2", tmp=tmp_path) as s:
        conv = _conversation(80)
        # Sharing under a tenth of its prompt with conv, it goes to the other slot.
        other = [{"role": "user", "content": "Name the colours of a rainbow, one by one. " * 4}]
        _chat(s, conv)
        live = _chat(s, conv)  # from the live slot
        n_prompt = live["usage"]["prompt_tokens"]
        saves = "interference_engine_prompt_cache_saves_total"
        released = "interference_engine_prompt_cache_released_slots_total"
        _wait_for(lambda: s.metrics()[saves] >= 1)  # saved while the engine is idle
        assert s.metrics()[released] == 0
        _chat(s, other)  # the idle slot that holds conv is saved: its cells go back to the pool
        assert s.metrics()[released] == 1
        hits = s.metrics()["interference_engine_prompt_cache_hits_total"]
        again = _chat(s, conv)  # restored from the cache into a slot
        assert s.metrics()["interference_engine_prompt_cache_hits_total"] == hits + 1
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
        assert again["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
        # A slot the cache does not hold yet keeps its cells: nothing is given back without a save.
        (tmp_path / "off").mkdir()
        with running_server("--parallel", "2", "--cache-ram", "0", tmp=tmp_path / "off") as off:
            _chat(off, conv)
            _chat(off, other)
            assert off.metrics()[released] == 0
            assert _chat(off, conv)["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
