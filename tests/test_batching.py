"""Continuous batching: many streams at once, fairness, cancellation, back-pressure, prefix reuse."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, running_server

# Bans SmolLM2's end-of-text and end-of-turn tokens, so a generation runs until max_tokens.
NO_EOS = {"0": -100, "2": -100}

PROMPTS = [
    "Write a poem about a tree.",
    "Explain how rain forms.",
    "List five fruits.",
    "Describe a busy city street.",
    "What is a prime number?",
    "Tell me about the moon.",
    "Give advice for learning to cook.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server("--parallel", "8", tmp=tmp_path_factory.mktemp("batch")) as s:
        yield s


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def stream_chat(url: str, prompt: str, **fields: object) -> tuple[str, list[str]]:
    """Returns (text, raw events) of one streamed chat completion."""
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        **fields,
    }
    events: list[str] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    text = "".join(
        (json.loads(e).get("choices") or [{}])[0].get("delta", {}).get("content") or ""
        for e in events
        if e != "[DONE]"
    )
    return text, events


def test_sixteen_concurrent_streams_all_finish(batch_server: RunningServer) -> None:
    prompts = PROMPTS * 2
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: stream_chat(batch_server.url, p, max_tokens=48), prompts))
    for text, events in results:
        assert events[-1] == "[DONE]"
        assert text.strip(), "a stream ended without text"
        finish = json.loads(events[-2])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")


def _greedy(url: str, prompt: str) -> str:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 40,
        "temperature": 0,
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    return str(r.json()["choices"][0]["message"]["content"])


def test_greedy_output_in_a_batch_starts_as_alone(batch_server: RunningServer) -> None:
    # The slots share one KV pool (llama.cpp's unified KV cache), where a sequence's logits depend on
    # what else is in the batch (max |delta logit| about 1.0): greedy text may part from the solo run
    # after a while, so only its start is compared (see bench/README.md, "Determinism").
    alone = _greedy(batch_server.url, PROMPTS[0])
    barrier = threading.Barrier(8)

    def in_batch(prompt: str) -> str:
        barrier.wait()
        return _greedy(batch_server.url, prompt)

    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(in_batch, PROMPTS))
    assert all(text.strip() for text in batched)
    assert batched[0].split()[:3] == alone.split()[:3]


def test_dropped_streams_free_their_slots(batch_server: RunningServer) -> None:
    body = {"model": "gpt-3.5-turbo", "stream": True, "max_tokens": 1500, "logit_bias": NO_EOS}
    clients, responses, readers = [], [], []
    for prompt in PROMPTS:
        c = httpx.Client(timeout=60)
        r = c.send(
            c.build_request(
                "POST",
                f"{batch_server.url}/v1/chat/completions",
                json={**body, "messages": [{"role": "user", "content": prompt}]},
            ),
            stream=True,
        )
        lines = r.iter_lines()
        seen = 0
        while seen < 3:  # read until real content is flowing
            if next(lines).startswith("data: "):
                seen += 1
        clients.append(c)
        responses.append(r)
        readers.append(lines)  # a dropped line iterator would close its response
    assert batch_server.metrics()["interference_engine_slots_active"] == 8
    for r, c in zip(responses, clients, strict=True):
        r.close()
        c.close()
    wait_for(lambda: batch_server.metrics()["interference_engine_slots_active"] == 0)
    # The next eight start at once: none has to wait for a slot.
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream_chat, batch_server.url, p, max_tokens=8) for p in PROMPTS]
        wait_for(lambda: all(f.done() for f in futures), timeout=120)
    assert all(f.result()[1][-1] == "[DONE]" for f in futures)


def test_non_streaming_disconnect_frees_the_slot(batch_server: RunningServer) -> None:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "max_tokens": 1500,
        "logit_bias": NO_EOS,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{batch_server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    wait_for(lambda: batch_server.metrics()["interference_engine_slots_active"] == 0)


def test_multi_turn_chat_reuses_the_prefix(batch_server: RunningServer) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a patient teacher."}]
    cached: list[int] = []
    for turn in range(5):
        messages.append(
            {"role": "user", "content": f"Question {turn + 1}: tell me one fact about the number {turn}."}
        )
        r = httpx.post(
            f"{batch_server.url}/v1/chat/completions",
            timeout=300,
            json={"model": "gpt-4o", "messages": messages, "max_tokens": 24, "temperature": 0},
        )
        body = r.json()
        cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert body["usage"]["prompt_tokens"] > cached[-1]
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    assert all(b > a for a, b in itertools.pairwise(cached)), cached


def test_queue_overflow_gives_429(tmp_path: Path) -> None:
    with running_server("--parallel", "1", "--max-queue", "1", tmp=tmp_path) as s:
        holder = httpx.Client(timeout=120)
        body = {
            "model": "gpt-4",
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "stream": True,
            "max_tokens": 1900,
            "logit_bias": NO_EOS,
        }
        running = holder.send(
            holder.build_request("POST", f"{s.url}/v1/chat/completions", json=body), stream=True
        )
        running_lines = running.iter_lines()
        next(running_lines)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(stream_chat, s.url, PROMPTS[1], max_tokens=4)
            wait_for(lambda: s.metrics()["interference_engine_requests_waiting"] == 1)
            r = httpx.post(f"{s.url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["type"] == "rate_limit_error"
            assert set(err) == {"message", "type", "param", "code"}
            running.close()
            holder.close()
            _text, events = waiting.result(timeout=120)
        assert events[-1] == "[DONE]"


def test_request_timeout_frees_the_slot(tmp_path: Path) -> None:
    with running_server("--request-timeout", "1", tmp=tmp_path) as s:
        body = {
            "model": "gpt-4",
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "max_tokens": 1900,
            "logit_bias": NO_EOS,
        }
        r = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "request_timeout"
        _text, events = stream_chat(s.url, PROMPTS[0], max_tokens=1900, logit_bias=NO_EOS)
        assert events[-1] == "[DONE]"
        assert "error" in json.loads(events[-2])
        wait_for(lambda: s.metrics()["interference_engine_slots_active"] == 0)
