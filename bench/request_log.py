"""What request ids and the access log cost: the app with and without them, in the same run.

    .venv/bin/python bench/request_log.py [--requests 3000] [--rounds 5] > request_log.json

Calls the ASGI app directly (no sockets, no HTTP parser), so the figures are the middleware's own
cost on top of everything else the app does per request. Two requests: ``GET /v1/models`` and a
streamed chat completion of 64 deltas from an in-process provider (the per-delta recording wrapper
is on that path). Variants, interleaved round by round so machine noise hits all of them alike:

* ``baseline``: the app without ``RequestIdMiddleware`` (and so without any recording);
* ``ids``: with it, access log off (``--no-access-log``);
* ``ids_text_log``: with it and the text access log, written to a discarded handler.

Prints one JSON object: microseconds per request (best round) and ratios against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from interference.api.app import create_app
from interference.api.request_log import RequestIdMiddleware
from interference.protocol import ChatCompletionRequest, CompletionRequest
from interference.providers.base import Delta, Provider, TokenUsage
from interference.router import Deployment, Route, Router
from interference.settings import Settings

DELTAS = 64
CHAT = json.dumps(
    {
        "model": "fast",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()


class _Fast(Provider):
    name = "fast"

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        for _ in range(DELTAS - 1):
            yield Delta(text="tok ")
        yield Delta(text="end", finish_reason="stop", usage=TokenUsage(5, DELTAS))

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        yield Delta(text="x", finish_reason="stop")


def _app(variant: str) -> Any:
    settings = Settings(access_log=variant == "ids_text_log")
    app = create_app(settings, Router([Route(name="fast", deployments=[Deployment(_Fast(), "fast")])]))
    if variant == "baseline":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestIdMiddleware]
    return app


async def _call(app: Any, method: str, path: str, body: bytes) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never goes away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def _round(app: Any, method: str, path: str, body: bytes, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await _call(app, method, path, body)
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    access = logging.getLogger("interference.access")
    access.addHandler(logging.NullHandler())
    access.setLevel(logging.INFO)
    access.propagate = False
    variants = ("baseline", "ids", "ids_text_log")
    apps = {v: _app(v) for v in variants}
    cases = {"models": ("GET", "/v1/models", b""), "chat_stream_64": ("POST", "/v1/chat/completions", CHAT)}
    best: dict[str, dict[str, float]] = {case: {} for case in cases}
    for case, (method, path, body) in cases.items():
        for v in variants:  # warm-up
            await _round(apps[v], method, path, body, 200)
        for r in range(args.rounds):
            for v in variants:
                us = await _round(apps[v], method, path, body, args.requests)
                best[case][v] = min(best[case].get(v, us), us)
                print(f"{case} round {r} {v}: {us:.1f} us/request", file=sys.stderr)
    report = {
        case: {
            "us_per_request": {v: round(us, 1) for v, us in timings.items()},
            "ratio_vs_baseline": {v: round(timings[v] / timings["baseline"], 3) for v in variants[1:]},
        }
        for case, timings in best.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
