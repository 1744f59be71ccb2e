"""Gateway overhead: interference in front of a fast upstream stub, vs the stub alone, vs LiteLLM's proxy.

    .venv/bin/python bench/gateway.py [--duration 10] [--skip-litellm] > gateway.json

Every target serves the same stub (a raw asyncio HTTP/1.1 server that answers instantly with a fixed
chat completion, or a fixed 8-event SSE stream). A raw asyncio load generator (keep-alive
connections, no HTTP library) measures, per target: req/s and latency at 16 and 64 connections,
latency at 1 connection (the "added" latency is the difference from the stub alone), and streaming
TTFT (send -> first content token) at 1 connection.

Targets, started one at a time and pinned to CPU 1 (the load generator and the stub run on CPU 0):

* ``direct``: the stub itself;
* ``interference``: ``interference serve --no-access-log`` (uvloop + httptools, chosen by uvicorn);
* ``interference_httpcore``: the same app with httpx's default transport (httpcore's pool) instead of
  the lean HTTP/1.1 transport, to show what the transport is worth;
* ``interference_asyncio_h11``: the same app on the plain asyncio loop with the pure-Python h11
  parser, to show what uvloop and httptools are worth;
* ``interference_aiohttp``: the same app with ``httpx-aiohttp``'s ``AiohttpTransport`` (the aiohttp
  backend of the openai SDK) instead of the lean transport; skipped unless ``httpx-aiohttp`` is
  installed;
* ``litellm``: ``litellm --config ... --num_workers 1`` from its own virtualenv
  (``.venv-litellm``, created with ``pip install 'litellm[proxy]'`` if missing), master key set.

Two in-process micro-benchmarks complete the picture: an ``httpx.AsyncClient`` shared vs created per
request, and orjson vs the standard json module on the payloads a request handles.

Progress goes to stderr, one JSON object to stdout. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from _gateway_load import (
    free_port,
    log,
    machine_info,
    raw_request,
    rounded,
    run_load,
    run_stub,
    spawn,
    stop,
    stub_responses,
    tree_cpu_seconds,
    wait_ready,
    wait_until_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-master"
UPSTREAM_KEY = "sk-bench-upstream"
VARIANTS = {
    "httpcore": ["--loop", "uvloop", "--http", "httptools", "--transport", "httpcore"],
    "asyncio_h11": ["--loop", "asyncio", "--http", "h11", "--transport", "http1"],
    "aiohttp": ["--loop", "uvloop", "--http", "httptools", "--transport", "aiohttp"],
}


# ---------------------------------------------------------------------- an interference variant


def run_variant(config: str, port: int, loop: str, http: str, transport: str) -> None:
    """The interference app under a chosen event loop, HTTP parser and upstream transport."""
    import uvicorn

    from interference.assembly import build_app
    from interference.providers import http_upstream
    from interference.settings import load_settings

    if transport == "httpcore":
        http_upstream._transport = lambda: None  # httpx's default transport (httpcore's pool)
    elif transport == "aiohttp":
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        def session() -> aiohttp.ClientSession:
            # As our own pool: no connection cap (the library would apply aiohttp's 100), 30 s keep-alive.
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0))

        http_upstream._transport = lambda: AiohttpTransport(client=session)
    app = build_app(load_settings({"port": port}, config_file=config))
    uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, http=http, access_log=False, log_level="warning")


def measure(port: int, model: str, key: str, seconds: float, pid: int) -> dict[str, Any]:
    """All phases against one target; ``pid`` is the target's process, whose CPU time is counted."""
    import uvloop

    whole = raw_request(port, model, stream=False, key=key)
    stream = raw_request(port, model, stream=True, key=key)

    async def phase(request: bytes, connections: int, duration: float) -> dict[str, Any]:
        cpu = tree_cpu_seconds(pid)
        result = await run_load(port, request, connections=connections, seconds=duration)
        # CPU time per request is what a busy machine cannot distort: the target's capacity per core.
        result["cpu_us_per_request"] = (tree_cpu_seconds(pid) - cpu) / max(result["requests"], 1) * 1e6
        return result

    async def phases() -> dict[str, Any]:
        await run_load(port, whole, connections=16, seconds=min(2.0, seconds))  # warm-up
        out: dict[str, Any] = {}
        for connections in (16, 64):
            out[f"c{connections}"] = await phase(whole, connections, seconds)
            log(f"  {connections} connections: {out[f'c{connections}']['rps']:.0f} req/s")
        out["c1"] = await phase(whole, 1, seconds / 2)
        out["stream_c1"] = await phase(stream, 1, seconds / 2)
        c1, ttft = out["c1"]["p50_ms"], out["stream_c1"]["ttft_p50_ms"]
        log(f"  1 connection: p50 {c1:.3f} ms, stream TTFT p50 {ttft:.3f} ms")
        return out

    return uvloop.run(phases())


# ---------------------------------------------------------------------- processes


def ensure_litellm(venv: Path) -> Path:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        log(f"creating {venv} with litellm[proxy] (one time)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return exe


def litellm_version(venv: Path) -> str | None:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip() or None


# ---------------------------------------------------------------------- micro-benchmarks


def client_microbench(port: int, seconds: float) -> dict[str, float]:
    """Requests per second to the stub, one at a time: one shared AsyncClient vs one per request."""
    import uvloop

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = orjson.dumps({"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]})

    async def shared() -> float:
        n, deadline = 0, time.perf_counter() + seconds
        async with httpx.AsyncClient() as client:
            while time.perf_counter() < deadline:
                (await client.post(url, content=body)).raise_for_status()
                n += 1
        return n / seconds

    async def per_request() -> float:
        n, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            async with httpx.AsyncClient() as client:
                (await client.post(url, content=body)).raise_for_status()
            n += 1
        return n / seconds

    return {"shared_client_rps": uvloop.run(shared()), "client_per_request_rps": uvloop.run(per_request())}


def json_microbench(rounds: int = 20000) -> dict[str, float]:
    """Microseconds per request for the JSON work of one non-stream pass-through (parse + dump)."""
    whole, _ = stub_responses()
    upstream_body = whole.split(b"\r\n\r\n", 1)[1]
    reply = json.loads(upstream_body)

    def timed(loads: Callable[[bytes], Any], dumps: Callable[[Any], bytes]) -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            dumps(loads(upstream_body))
            dumps(reply)
        return (time.perf_counter() - t0) / rounds * 1e6

    return {
        "orjson_us": timed(orjson.loads, orjson.dumps),
        "stdlib_json_us": timed(json.loads, lambda o: json.dumps(o).encode()),
    }


# ---------------------------------------------------------------------- main


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    direct = results.get("direct")
    out: dict[str, Any] = {}
    for name, r in results.items():
        if name == "direct" or direct is None:
            continue
        out[name] = {
            "added_p50_ms": r["c1"]["p50_ms"] - direct["c1"]["p50_ms"],
            "added_p99_ms": r["c1"]["p99_ms"] - direct["c1"]["p99_ms"],
            "added_ttft_p50_ms": r["stream_c1"]["ttft_p50_ms"] - direct["stream_c1"]["ttft_p50_ms"],
        }
    ours = results.get("interference")
    for name, r in results.items():
        if name.startswith("interference_") and ours is not None and name in out:
            # A variant against the shipped build, measured in the same run: > 1 is the variant faster.
            out[name]["rps_over_interference"] = {
                c: r[c]["rps"] / ours[c]["rps"] if ours[c]["rps"] else None for c in ("c16", "c64")
            }
            out[name]["added_p50_over_interference"] = (
                out[name]["added_p50_ms"] / out["interference"]["added_p50_ms"]
                if out["interference"]["added_p50_ms"] > 0
                else None
            )
    if "litellm" in results and "interference" in results:
        lite, ours = results["litellm"], results["interference"]
        out["rps_interference_over_litellm"] = {
            c: ours[c]["rps"] / lite[c]["rps"] if lite[c]["rps"] else None for c in ("c16", "c64")
        }
    if "interference" in out:
        ratios = out.get("rps_interference_over_litellm", {})
        out["targets"] = {
            "rps_at_least_10x_litellm": bool(ratios)
            and all(r is not None and r >= 10 for r in ratios.values()),
            "added_p50_at_most_2ms": out["interference"]["added_p50_ms"] <= 2.0,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    stub = sub.add_parser("stub", help=argparse.SUPPRESS)
    stub.add_argument("--port", type=int, required=True)
    variant = sub.add_parser("variant", help=argparse.SUPPRESS)
    variant.add_argument("--config", required=True)
    variant.add_argument("--port", type=int, required=True)
    variant.add_argument("--loop", default="asyncio")
    variant.add_argument("--http", default="h11")
    variant.add_argument("--transport", default="http1", choices=["http1", "httpcore", "aiohttp"])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase (default 10)")
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--skip-variants", action="store_true", help="skip the httpcore, asyncio + h11 and aiohttp runs"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), metavar="NAME",
        help=f"run only these variants (of: {', '.join(sorted(VARIANTS))})",
    )  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--wait-quiet", type=float, default=600.0, metavar="S",
        help="wait up to S seconds for other work on the machine to stop first (default 600)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.role == "stub":
        run_stub(args.port)
        return 0
    if args.role == "variant":
        run_variant(args.config, args.port, args.loop, args.http, args.transport)
        return 0

    machine = machine_info()
    machine["busy_before"] = wait_until_quiet(args.wait_quiet)
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    bench_cpu, target_cpu = (0, 1) if pinned else (None, None)
    if bench_cpu is not None:
        os.sched_setaffinity(0, {bench_cpu})
    here = str(Path(__file__).resolve())
    stub_port = free_port()
    stub_proc = spawn("stub", [sys.executable, here, "stub", "--port", str(stub_port)], cpu=bench_cpu)
    procs = [stub_proc]
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        time.sleep(0.5)
        log("direct: the stub alone")
        results["direct"] = measure(stub_port, "stub-model", UPSTREAM_KEY, args.duration, stub_proc.pid)

        config = tmp / "interference.toml"
        config.write_text(
            f'log_level = "warning"\napi_keys = ["{KEY}"]\n\n'
            '[[models]]\nname = "bench"\n\n[[models.deployments]]\n'
            f'type = "openai"\nbase_url = "http://127.0.0.1:{stub_port}/v1"\nmodel = "stub-model"\n'
            f'api_key = "{UPSTREAM_KEY}"\n'
        )
        runs: list[tuple[str, list[str], dict[str, str], str]] = []
        port = free_port()
        runs.append((
            "interference",
            [sys.executable, "-m", "interference", "serve", "--config", str(config), "--port", str(port),
             "--no-access-log"],
            {}, f"http://127.0.0.1:{port}/health",
        ))  # fmt: skip
        chosen = [] if args.skip_variants else args.variants or sorted(VARIANTS)
        if "aiohttp" in chosen and importlib.util.find_spec("httpx_aiohttp") is None:
            log("skipping the aiohttp variant: pip install httpx-aiohttp to run it")
            chosen.remove("aiohttp")
        for variant_name in chosen:
            name, options = f"interference_{variant_name}", VARIANTS[variant_name]
            port = free_port()
            runs.append((
                name,
                [sys.executable, here, "variant", "--config", str(config), "--port", str(port), *options],
                {}, f"http://127.0.0.1:{port}/health",
            ))  # fmt: skip
        versions: dict[str, Any] = {}
        if not args.skip_litellm:
            exe = ensure_litellm(args.litellm_venv)
            versions["litellm"] = litellm_version(args.litellm_venv)
            lite_config = tmp / "litellm.yaml"
            lite_config.write_text(
                "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/stub-model\n"
                f"      api_base: http://127.0.0.1:{stub_port}/v1\n      api_key: {UPSTREAM_KEY}\n"
                "litellm_settings:\n  telemetry: false\n"
            )
            port = free_port()
            # No network beyond 127.0.0.1: the bundled cost map instead of a download, no telemetry.
            lite_env = {
                "LITELLM_MASTER_KEY": KEY,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "HF_HUB_OFFLINE": "1",
                "NO_PROXY": "127.0.0.1,localhost",
            }
            runs.append((
                "litellm",
                [str(exe), "--config", str(lite_config), "--port", str(port), "--host", "127.0.0.1",
                 "--num_workers", "1"],
                lite_env, f"http://127.0.0.1:{port}/health/liveliness",
            ))  # fmt: skip
        for name, cmd, env, ready in runs:
            proc = spawn(name, cmd, cpu=target_cpu, env=env)
            procs.append(proc)
            try:
                wait_ready(proc, ready)
                log(name)
                port = int(ready.split(":")[2].split("/")[0])
                results[name] = measure(port, "bench", KEY, args.duration, proc.pid)
            finally:
                stop(proc)
                procs.remove(proc)

        log("micro-benchmarks")
        micro = {"httpx_client": client_microbench(stub_port, 3.0), "json_per_request": json_microbench()}
    finally:
        for proc in procs:
            stop(proc)

    report = {
        "machine": {**machine, "pinned": pinned, "litellm": versions.get("litellm")},
        "duration_s": args.duration,
        "results": results,
        "summary": _summary(results),
        "micro": micro,
    }
    print(json.dumps(rounded(report, 3), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
