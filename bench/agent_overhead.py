"""What interference adds to agent-sized requests, in front of an upstream that answers at once.

    .venv/bin/python bench/agent_overhead.py [--rounds 5] [--requests 200] > agent_overhead.json

Agent clients send large requests and resend them whole on every turn. This replays three bodies of
the shapes they send (built by ``_agent_bodies.py`` with made-up content): a Claude Code
``/v1/messages`` request (about 117 KB, 24 tools), the same conversation as ``/v1/chat/completions``
(25 function tools), and a Codex ``/v1/responses`` request (about 41 KB, 9 tools). Each goes, one at
a time over one keep-alive connection, plain and streamed:

* ``direct``: straight to the upstream stub of bench/gateway.py (it answers any POST with a fixed chat
  completion, or a fixed SSE stream when the body says ``"stream":true``);
* ``interference``: to ``interference serve --no-access-log`` with one ``openai`` deployment pointing
  at the same stub (so ``/v1/messages`` and ``/v1/responses`` are translated to chat).

Targets alternate within every round (direct, then interference, for each route and mode), so slow
spells of a shared machine hit both. Per round: p50 and p95 latency (send to the last byte) both ways;
the report gives their medians over the rounds, ``added_p50_ms`` (interference minus direct, median
of the per-round differences) and ``ratio_p50`` (interference over direct). A route that interference
refuses (a 4xx before any measurement) is reported with its status and error message instead.

Progress goes to stderr, one JSON object to stdout. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from _agent_bodies import chat_body, messages_body, responses_body
from _gateway_load import (
    free_port,
    log,
    machine_info,
    percentile,
    rounded,
    spawn,
    stop,
    tree_cpu_seconds,
    wait_ready,
    wait_until_quiet,
)

KEY = "sk-bench-master"
UPSTREAM_KEY = "sk-bench-upstream"
ROUTES = {
    "chat": ("/v1/chat/completions", chat_body),
    "messages": ("/v1/messages", messages_body),
    "responses": ("/v1/responses", responses_body),
}


def raw_request(port: int, path: str, body: bytes, key: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\nanthropic-version: 2023-06-01\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one whole response (sized or chunked); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        at = lower.find(b"content-length:")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
        await reader.readexactly(length)
    return status


async def timed(port: int, request: bytes, count: int) -> list[float]:
    """Latencies in ms of ``count`` requests sent one after the other on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[float] = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            if status != 200:
                raise RuntimeError(f"status {status} on port {port}")
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        writer.close()
    return out


def preflight(port: int, path: str, body: bytes) -> str | None:
    """None when interference serves the body; otherwise its status and error message."""
    headers = {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    response = httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=30)
    if response.status_code == 200:
        return None
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = response.text[:300]
    return f"{response.status_code}: {message}"


def measure(
    stub_port: int, targets: dict[str, tuple[int, int]], rounds: int, requests: int, warmup: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every case against the stub (``direct``) and each interference in ``targets`` (name -> port, pid).

    Beside the latencies, each interference's CPU time per request (its process tree's, over the
    round's requests): the figure that other work on a shared machine does not move.
    """
    import uvloop

    first_port = next(iter(targets.values()))[0]
    refused: dict[str, str] = {}
    cases: dict[str, dict[str, tuple[int, bytes]]] = {}
    sizes: dict[str, int] = {}
    for route, (path, build) in ROUTES.items():
        for stream in (False, True):
            body = orjson.dumps(build("bench", stream=stream))
            error = preflight(first_port, path, body)
            if error is not None:
                refused[route] = error
                log(f"{route}: interference refused the body ({error}); not measured")
                break
            name = f"{route}_{'stream' if stream else 'whole'}"
            sizes[name] = len(body)
            direct_body = orjson.dumps(build("stub-model", stream=stream))
            cases[name] = {
                "direct": (
                    stub_port,
                    raw_request(stub_port, "/v1/chat/completions", direct_body, UPSTREAM_KEY),
                )
            }
            for target, (port, _) in targets.items():
                cases[name][target] = (port, raw_request(port, path, body, KEY))
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {target: [] for target in by_target} for name, by_target in cases.items()
    }

    async def run() -> None:
        for by_target in cases.values():
            for port, request in by_target.values():
                await timed(port, request, warmup)
        for r in range(rounds):
            for name, by_target in cases.items():
                for target, (port, request) in by_target.items():
                    pid = targets[target][1] if target in targets else None
                    cpu = tree_cpu_seconds(pid) if pid is not None else 0.0
                    ms = await timed(port, request, requests)
                    sample = {"p50": percentile(ms, 50), "p95": percentile(ms, 95)}
                    if pid is not None:
                        sample["cpu_ms"] = (tree_cpu_seconds(pid) - cpu) / requests * 1000
                    samples[name][target].append(sample)
            log(f"round {r + 1}/{rounds} done")

    uvloop.run(run())
    results: dict[str, Any] = {}
    for name, by_target in samples.items():
        direct = by_target["direct"]
        row: dict[str, Any] = {"body_bytes": sizes[name]}
        for target, rows in by_target.items():
            row[target] = {
                "p50_ms": statistics.median(x["p50"] for x in rows),
                "p95_ms": statistics.median(x["p95"] for x in rows),
            }
            if target == "direct":
                continue
            added = [o["p50"] - d["p50"] for d, o in zip(direct, rows, strict=True)]
            row[target]["added_p50_ms"] = statistics.median(added)
            row[target]["added_p50_ms_per_round"] = added
            row[target]["ratio_p50"] = row[target]["p50_ms"] / row["direct"]["p50_ms"]
            row[target]["ratio_p95"] = row[target]["p95_ms"] / row["direct"]["p95_ms"]
            row[target]["cpu_ms_per_request"] = statistics.median(x["cpu_ms"] for x in rows)
            ours, theirs = row[target]["p50_ms"], row["direct"]["p50_ms"]
            log(f"{name}: {target} p50 {ours:.3f} ms, direct {theirs:.3f} ms, added {ours - theirs:.3f} ms")
        results[name] = row
    return results, refused


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", choices=["stub"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each times every case both ways (5)")
    parser.add_argument("--requests", type=int, default=200, help="requests per case, target and round (200)")
    parser.add_argument(
        "--warmup", type=int, default=30, help="untimed requests per case and target first (30)"
    )
    parser.add_argument(
        "--baseline-src", metavar="DIR",
        help="also measure the interference of another checkout (its DIR/src), in the same rounds",
    )  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--wait-quiet", type=float, default=60.0, metavar="S",
        help="wait up to S seconds for other work on the machine to stop first (default 60)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.role == "stub":
        from _gateway_load import run_stub

        run_stub(args.port)
        return 0

    machine = machine_info()
    machine["busy_before"] = wait_until_quiet(args.wait_quiet)
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    bench_cpu, target_cpu = (0, 1) if pinned else (None, None)
    if bench_cpu is not None:
        os.sched_setaffinity(0, {bench_cpu})
    here = str(Path(__file__).resolve())
    stub_port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    config = tmp / "interference.toml"
    config.write_text(
        f'log_level = "warning"\napi_keys = ["{KEY}"]\n\n'
        '[[models]]\nname = "bench"\n\n[[models.deployments]]\n'
        f'type = "openai"\nbase_url = "http://127.0.0.1:{stub_port}/v1"\nmodel = "stub-model"\n'
        f'api_key = "{UPSTREAM_KEY}"\n'
    )
    procs = [spawn("stub", [sys.executable, here, "stub", "--port", str(stub_port)], cpu=bench_cpu)]
    targets: dict[str, tuple[int, int]] = {}
    sources = [("interference", None)] + (
        [("interference_baseline", args.baseline_src)] if args.baseline_src else []
    )
    try:
        for name, src in sources:
            port = free_port()
            env = {"PYTHONPATH": str(Path(src).resolve() / "src")} if src else None
            proc = spawn(
                name,
                [sys.executable, "-m", "interference", "serve", "--config", str(config), "--port", str(port),
                 "--no-access-log"],
                cpu=target_cpu, env=env,
            )  # fmt: skip
            procs.append(proc)
            wait_ready(proc, f"http://127.0.0.1:{port}/health")
            targets[name] = (port, proc.pid)
        started = time.perf_counter()
        results, refused = measure(stub_port, targets, args.rounds, args.requests, args.warmup)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            stop(proc)
    summary: dict[str, Any] = {}
    for case, row in results.items():
        summary[case] = {
            target: {k: r[k] for k in ("added_p50_ms", "ratio_p50", "cpu_ms_per_request")}
            for target, r in row.items()
            if isinstance(r, dict) and "added_p50_ms" in r
        }
    report = {
        "machine": {**machine, "pinned": pinned, "busy_after": wait_until_quiet(0)},
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "seconds": elapsed,
        "baseline_src": args.baseline_src,
        "results": results,
        "refused": refused,
        "summary": summary,
    }
    print(json.dumps(rounded(report, 3), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
