"""How throughput grows with engine replicas on Ray Serve, and what the ingress and the router add.

Part 1, a stand-in engine: each replica has ``--slots`` decoding slots and "generates" one token every
``--token-ms`` milliseconds by sleeping (no CPU), so a replica serves ``slots / (tokens x token_ms)``
requests a second whatever the machine. Behind 1, 2, 4 and 8 replicas (one ingress replica, the
default prefix-affine router, every request a prompt of its own), closed-loop clients keep every
slot busy (``replicas x slots`` requests in flight, non-streaming chat completions). Throughput is
compared with ``replicas x`` the 1-replica figure (the goal is >= 0.9x linear up to 8). The added
latency is one request at a time: the HTTP round trip through the ingress less the engine's own
``tokens x token_ms``, and the same through a deployment handle from this process (the router and
Ray's streaming, without HTTP and the ingress).

Part 2, the real embedded model at 1 against 2 replicas of one thread each, ``--real-concurrency``
requests in flight: on a machine of 2 cores shared with other work, so the ratio says how far two
replicas use the second core, not how a cluster scales.

Prints one JSON object.

Usage::

    python bench/ray_scaling.py [--replicas 1,2,4,8] [--token-ms 50] [--tokens 20] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from interference.providers.base import Delta, TokenUsage
from interference.ray.replica import RouteInfo

TOKEN_S_ENV = "INTERFERENCE_BENCH_TOKEN_S"


class SleepEngine:
    """An engine replica that sleeps per token: what Ray Serve and the ingress add, alone."""

    def __init__(self, settings: Any) -> None:
        self._slots = asyncio.Semaphore(settings.parallel)
        self._token_s = float(os.environ.get(TOKEN_S_ENV, "0.05"))

    async def routes(self) -> list[RouteInfo]:
        return [RouteInfo(name="sleep", models=("sleep",), aliases=(), kind="chat", is_default=True)]

    async def chat(self, request: Any, model: str) -> AsyncIterator[Delta]:
        tokens = request.max_tokens or 16
        async with self._slots:
            for _ in range(tokens - 1):
                await asyncio.sleep(self._token_s)
                yield Delta(text="x ")
            await asyncio.sleep(self._token_s)
            yield Delta(
                text="x", finish_reason="length", usage=TokenUsage(prompt_tokens=8, completion_tokens=tokens)
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _body(model: str, tokens: int) -> dict[str, Any]:
    prompt = f"request {uuid.uuid4().hex}: tell me a story"
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}


async def closed_loop(url: str, model: str, *, clients: int, requests: int, tokens: int) -> dict[str, Any]:
    """``clients`` loops posting until ``requests`` are done; requests/s, tokens/s, latency."""
    left = requests
    latencies: list[float] = []
    completion = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def loop() -> None:
            nonlocal left, completion
            while left > 0:
                left -= 1
                started = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json=_body(model, tokens))
                r.raise_for_status()
                latencies.append(time.perf_counter() - started)
                completion += r.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests": requests,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(requests / elapsed, 2),
        "tokens_per_s": round(completion / elapsed, 1),
        "p50_latency_ms": round(statistics.median(latencies) * 1000, 1),
    }


async def one_at_a_time_http(url: str, model: str, *, n: int, tokens: int) -> float:
    async with httpx.AsyncClient(timeout=120) as client:
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=_body(model, tokens))
            r.raise_for_status()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


async def one_at_a_time_handle(handle: Any, *, n: int, tokens: int) -> float:
    from interference.protocol import ChatCompletionRequest

    stream = handle.options(stream=True)
    latencies = []
    for _ in range(n):
        request = ChatCompletionRequest.model_validate(_body("sleep", tokens))
        started = time.perf_counter()
        async for _ in stream.chat.remote(request, "sleep"):
            pass
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def sleep_engine_part(args: argparse.Namespace, port: int) -> dict[str, Any]:
    from ray import serve

    from interference.ray.app import Scaling, build_app
    from interference.settings import Settings

    url = f"http://127.0.0.1:{port}"
    settings = Settings(parallel=args.slots, keys_file=None, usage_db=args.usage_db, embeddings=False)
    engine_s = args.tokens * args.token_ms / 1000
    rows: list[dict[str, Any]] = []
    overhead: dict[str, float] = {}
    for replicas in args.replicas:
        scaling = Scaling(replicas=replicas, requests_per_slot=args.requests_per_slot)
        app = build_app(settings, scaling, routing=args.routing, engine_num_cpus=0, engine_class=SleepEngine)
        serve.run(app, name="bench", route_prefix="/")
        clients = replicas * args.slots
        asyncio.run(
            closed_loop(url, "sleep", clients=clients, requests=clients, tokens=args.tokens)
        )  # warm-up
        row = asyncio.run(
            closed_loop(url, "sleep", clients=clients, requests=clients * args.rounds, tokens=args.tokens)
        )
        row["replicas"] = replicas
        row["ideal_requests_per_s"] = round(clients / engine_s, 2)
        if replicas == 1:
            http = asyncio.run(one_at_a_time_http(url, "sleep", n=args.latency_requests, tokens=args.tokens))
            handle = serve.get_deployment_handle("Engine", app_name="bench")
            direct = asyncio.run(one_at_a_time_handle(handle, n=args.latency_requests, tokens=args.tokens))
            overhead = {
                "engine_ms": round(engine_s * 1000, 1),
                "through_ingress_ms": round((http - engine_s) * 1000, 1),
                "through_handle_ms": round((direct - engine_s) * 1000, 1),
                "ingress_alone_ms": round((http - direct) * 1000, 1),
            }
        rows.append(row)
        serve.delete("bench")
    base = rows[0]["requests_per_s"] / rows[0]["replicas"]
    for row in rows:
        row["vs_linear"] = round(row["requests_per_s"] / (base * row["replicas"]), 3)
    return {
        "routing": args.routing,
        "requests_per_slot": args.requests_per_slot,
        "token_ms": args.token_ms,
        "tokens_per_request": args.tokens,
        "slots_per_replica": args.slots,
        "throughput": rows,
        "added_latency_per_request": overhead,
        "goal_vs_linear": 0.9,
    }


def real_model_part(args: argparse.Namespace, port: int) -> dict[str, Any]:
    from ray import serve

    from interference.ray.app import Scaling, build_app
    from interference.settings import Settings

    url = f"http://127.0.0.1:{port}"
    settings = Settings(threads=1, parallel=2, keys_file=None, usage_db=args.usage_db, embeddings=False)
    rows = []
    for replicas in (1, 2):
        serve.run(build_app(settings, Scaling(replicas=replicas)), name="bench", route_prefix="/")
        clients = args.real_concurrency
        asyncio.run(closed_loop(url, "gpt-4o", clients=clients, requests=clients, tokens=args.real_tokens))
        row = asyncio.run(
            closed_loop(url, "gpt-4o", clients=clients, requests=args.real_requests, tokens=args.real_tokens)
        )
        row["replicas"] = replicas
        rows.append(row)
        serve.delete("bench")
    return {
        "note": "embedded model, 1 thread per replica, on a 2-core machine shared with other work",
        "max_tokens": args.real_tokens,
        "throughput": rows,
        "tokens_per_s_2_vs_1": round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--token-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="requests per client in the measured loop")
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--real-requests", type=int, default=24)
    parser.add_argument("--real-tokens", type=int, default=32)
    parser.add_argument("--real-concurrency", type=int, default=4)
    parser.add_argument("--routing", choices=["prefix", "pow2"], default="prefix")
    parser.add_argument("--requests-per-slot", type=int, default=2, help="engine replica capacity per slot")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--usage-db", default=None, help="the ledger file (default: a temporary one)")
    args = parser.parse_args()
    if args.usage_db is None:
        args.usage_db = f"/tmp/interference-bench-{os.getpid()}.db"
    os.environ[TOKEN_S_ENV] = str(args.token_ms / 1000)  # the engine replicas' workers inherit it

    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        result: dict[str, Any] = {"benchmark": "ray_scaling", "cpus": os.cpu_count()}
        result["sleep_engine"] = sleep_engine_part(args, port)
        if not args.skip_real:
            result["real_model"] = real_model_part(args, port)
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Ray's shutdown notices: stdout is the JSON
            serve.shutdown()
            ray.shutdown()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
