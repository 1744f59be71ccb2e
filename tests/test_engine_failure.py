"""The engine never fails silently: a dead scheduler thread turns /health to 503 and every request in it
ends with an error; cancelling at the moment of admission never leaves a slot generating for nobody.

The engine-death tests run the real app and the real engine in this process (uvicorn in a thread) and
break llama.cpp calls of that engine: the real engine has no input that makes its loop fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from conftest import free_port, running_server
from interference.assembly import build_app
from interference.engine.handle import HandleState, QueueFull, RequestHandle, WaitQueue, estimate_wait
from interference.engine.types import EngineRequest
from interference.providers.local import LocalProvider
from interference.providers.managed import ManagedLocalProvider
from interference.settings import load_settings

NO_EOS = {"0": -100, "2": -100}


@dataclass
class InProcessServer:
    url: str
    server: uvicorn.Server
    provider: LocalProvider


@pytest.fixture()
def inproc() -> Iterator[InProcessServer]:
    settings = load_settings({"parallel": 1, "embeddings": False, "threads": 2}, env={})
    app = build_app(settings)
    managed = next(p for p in app.state.interference.router.providers if isinstance(p, ManagedLocalProvider))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started or managed.local is None:  # the default model loads after start-up
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield InProcessServer(f"http://127.0.0.1:{port}", server, managed.local)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Count to a thousand."}], **fields}


def test_a_dead_engine_fails_its_requests_and_turns_health_to_503(
    inproc: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = inproc.provider.engine.runtime
    broken = threading.Event()
    real_decode = runtime.decode

    def decode() -> int:
        if broken.is_set():
            raise RuntimeError("llama_decode exploded")
        return real_decode()

    def seq_clear(seq: int) -> None:  # makes the step's own recovery fail too: the thread dies
        raise RuntimeError("llama_memory_seq_rm exploded")

    runtime.decode = decode  # type: ignore[method-assign]
    runtime.seq_clear = seq_clear  # type: ignore[method-assign]
    caplog.set_level(logging.CRITICAL, logger="interference.engine.scheduler")
    with httpx.Client(base_url=inproc.url, timeout=60) as http, ThreadPoolExecutor(1) as pool:
        assert http.get("/health").status_code == 200
        events: list[str] = []
        with http.stream(
            "POST", "/v1/chat/completions", json=_body(stream=True, max_tokens=400, logit_bias=NO_EOS)
        ) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            for line in lines:  # the stream is running: it holds the only slot
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) >= 3:
                    break
            waiting = pool.submit(http.post, "/v1/chat/completions", json=_body(max_tokens=8))
            deadline = time.monotonic() + 10
            while inproc.provider.engine.scheduler.n_waiting == 0:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.01)
            broken.set()
            events += [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and error["message"]
        queued = waiting.result(timeout=30)
        assert queued.status_code == 500
        assert queued.json()["error"]["type"] == "server_error"

        health = http.get("/health")
        assert health.status_code == 503
        assert http.get("/ready").status_code == 503
        refused = http.post("/v1/chat/completions", json=_body(max_tokens=4))
        assert refused.status_code == 503
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert refused.json()["error"]["code"] == "service_unavailable"
        streamed = http.post("/v1/chat/completions", json=_body(max_tokens=4, stream=True))
        assert streamed.status_code == 503
        metrics = http.get("/metrics").text
        assert 'interference_engine_slots_active{model="local:SmolLM2-135M-Instruct.Q4_1"} 0.0' in metrics
    dying = [r for r in caplog.records if "the engine failed" in r.getMessage()]
    assert len(dying) == 1
    assert "RuntimeError" in dying[0].getMessage()


def test_closing_never_frees_the_context_under_a_running_decode(inproc: InProcessServer) -> None:
    engine = inproc.provider.engine
    runtime = engine.runtime
    entered, release = threading.Event(), threading.Event()
    real_decode = runtime.decode

    def slow_decode() -> int:
        entered.set()
        release.wait(30)
        return real_decode()

    runtime.decode = slow_decode  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post, f"{inproc.url}/v1/chat/completions", json=_body(max_tokens=2), timeout=60
        )
        assert entered.wait(30)
        assert engine.scheduler.stop(timeout=0.2) is False  # still inside llama_decode
        engine.close(timeout=0.2)
        assert runtime.ctx is not None, "the context was freed while the engine thread used it"
        release.set()
        assert pending.result(timeout=30).status_code in (200, 500, 503)
    assert engine.scheduler.stop(timeout=30) is True


# --------------------------------------------------------------------------- the admission race


def _request() -> EngineRequest:
    return EngineRequest(request_id="r", prompt=(1, 2, 3))


def test_abort_and_admission_race_always_ends_aborted() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = WaitQueue(n_slots=1, max_waiting=1)
        start = threading.Barrier(2)
        for _ in range(3000):
            handle = RequestHandle(_request(), loop, queue.remove, deadline=time.monotonic() + 60)
            queue.put(handle)
            popped: list[RequestHandle | None] = []

            def admit(popped: list[RequestHandle | None] = popped) -> None:
                start.wait()
                popped.append(queue.pop())

            worker = threading.Thread(target=admit)
            worker.start()
            start.wait()
            handle.abort()
            worker.join()
            assert handle.state is HandleState.ABORTED  # whoever came first, nobody runs it
            if popped[0] is not None:
                assert popped[0] is handle
                queue.release()  # what the scheduler does when it reaps the aborted slot
            assert queue.active == 0 and len(queue) == 0
            assert handle.try_start() is False
    finally:
        loop.close()


def test_retry_after_follows_the_queue_and_recent_service_time() -> None:
    assert estimate_wait(position=0, n_slots=4, service_seconds=None) == 1.0
    assert estimate_wait(position=7, n_slots=4, service_seconds=3.0) == 6.0
    assert estimate_wait(position=63, n_slots=8, service_seconds=2.0) == 16.0
    assert estimate_wait(position=1000, n_slots=1, service_seconds=10.0) == 60.0
    assert estimate_wait(position=0, n_slots=8, service_seconds=0.1) == 1.0
    assert QueueFull(12.0).retry_after == 12.0


def test_retry_after_is_computed_by_the_server(tmp_path: Path) -> None:
    with running_server("--parallel", "1", "--max-queue", "1", "--no-embeddings", tmp=tmp_path) as server:
        http = server.http(timeout=120)
        long = _body(max_tokens=60, logit_bias=NO_EOS, temperature=0)
        for _ in range(2):  # a recent service time of about 60 tokens
            assert http.post("/v1/chat/completions", json=long).status_code == 200
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(http.post, "/v1/chat/completions", json=long) for _ in range(2)]
            deadline = time.monotonic() + 30
            while server.metrics().get("interference_engine_requests_waiting", 0) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = http.post("/v1/chat/completions", json=long)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "server_overloaded"
            assert int(refused.headers["Retry-After"]) >= 1
            assert all(f.result().status_code == 200 for f in busy)


def test_cancelling_at_admission_many_times_leaves_no_slot_busy(tmp_path: Path) -> None:
    rng = random.Random(7)
    with running_server("--parallel", "2", "--no-embeddings", tmp=tmp_path) as server:

        def cancel_soon() -> None:
            body = _body(stream=True, max_tokens=500, logit_bias=NO_EOS)
            with (
                httpx.Client(base_url=server.url, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                time.sleep(rng.uniform(0, 0.03))
                assert r.status_code in (200, 429)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: cancel_soon(), range(80)))
        deadline = time.monotonic() + 10
        while True:
            m = server.metrics()
            if m["interference_engine_slots_active"] == 0 and m["interference_engine_requests_waiting"] == 0:
                break
            assert time.monotonic() < deadline, f"slots still busy: {m}"
            time.sleep(0.05)
        reply = server.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
