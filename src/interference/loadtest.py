"""``interference bench``: streaming load against any OpenAI-compatible server, one JSON line per level."""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import orjson

__all__ = ["run_bench"]


@dataclass(slots=True)
class _Result:
    ttft: float = 0.0
    tokens: int = 0
    decode_tps: float = 0.0
    error: str = ""


def _one(client: httpx.Client, args: argparse.Namespace, tag: int, out: list[_Result]) -> None:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"{args.prompt} (request {tag})"}],
        "max_tokens": args.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = _Result()
    started = time.perf_counter()
    first = last = 0.0
    try:
        with client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                result.error = f"HTTP {response.status_code}"
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = orjson.loads(line[6:])
                if event.get("usage"):
                    result.tokens = int(event["usage"]["completion_tokens"])
                for choice in event.get("choices") or []:
                    if choice.get("delta", {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    if first:
        result.ttft = first - started
        if result.tokens > 1 and last > first:
            result.decode_tps = (result.tokens - 1) / (last - first)
    out.append(result)


def _level(client: httpx.Client, args: argparse.Namespace, concurrency: int) -> dict[str, object]:
    results: list[_Result] = []
    threads = [threading.Thread(target=_one, args=(client, args, i, results)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = [r for r in results if not r.error and r.tokens]
    ttfts = sorted(r.ttft for r in ok)
    return {
        "concurrency": concurrency,
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "aggregate_tps": round(sum(r.tokens for r in ok) / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
        "ttft_max_s": round(ttfts[-1], 4) if ttfts else None,
        "stream_decode_tps_p50": round(statistics.median(r.decode_tps for r in ok), 1) if ok else None,
    }


def run_bench(args: argparse.Namespace) -> int:
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    headers = {"Authorization": f"Bearer {args.api_key}"}
    limits = httpx.Limits(max_connections=max(levels, default=1))
    with httpx.Client(base_url=args.url, headers=headers, timeout=600, limits=limits) as client:
        for concurrency in levels:
            line = _level(client, args, concurrency)
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
    return 0
