"""Single-stream benchmark: interference vs llama-server on the same GGUF.

Both servers are started (one after the other, so cold starts do not overlap),
then identical streaming requests alternate A/B/A/B. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from interference.engine.cpu import choose_repack, read_cpu_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LONG_PROMPT,
    Server,
    StreamResult,
    embedded_gguf,
    exit_on_sigterm,
    free_port,
    median,
    percentile,
    ratio,
    rounded,
    start_server,
    stop_server,
    stream_chat,
)
from _system import ForeignLoad, idle_cpu_cores, machine_info, rss_mb, wait_until_quiet

QUIET = 0.10  # a request counts as "quiet" when other processes used < 10% of the CPU
FIRST_PROMPT = [{"role": "user", "content": "Say hello in one short sentence."}]


def interference_cmd(template: str | None, port: int, extra: list[str]) -> list[str]:
    """Command line for our server; ``template`` may contain ``{port}``."""
    if template:
        return shlex.split(template.format(port=port))
    exe = Path(sys.executable).with_name("interference")
    found = str(exe) if exe.exists() else shutil.which("interference") or str(exe)
    return [found, "serve", "--port", str(port), *extra]


def llama_server_binary(path: str | None) -> Path:
    """``--llama-server`` when given, else the reference build (compiled once, then cached)."""
    if path:
        return Path(path)
    from baseline import ensure_llama_server

    return ensure_llama_server()


def llama_server_cmd(binary: Path, gguf: Path, port: int, extra: list[str]) -> list[str]:
    """llama-server on ``gguf``; with ``--no-repack`` where interference's own default turns repacking
    off (AMX CPUs, whose repacked weights crash at the first decode: llama.cpp #20824)."""
    default_on = choose_repack(None, read_cpu_info()).enabled
    repack = [] if "--repack" in extra or default_on else ["--no-repack"]
    return [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), *extra, *repack]


def cold_start(name: str, cmd: list[str], port: int, client: httpx.Client, retries: int = 3) -> Server:
    """Start a server and time spawn -> healthy -> first short answer completed.

    The start is redone (after waiting for quiet) when other processes loaded the CPU meanwhile.
    """
    for attempt in range(retries + 1):
        if attempt:
            wait_until_quiet(60.0)
        probe = ForeignLoad([])  # our own children (the servers) count as ours
        srv = start_server(name, cmd, port)
        res = stream_chat(client, srv.base_url, FIRST_PROMPT, 16, srv.model)
        if res.error or res.content_chunks == 0:
            tail = srv.log_tail()
            stop_server(srv)
            raise RuntimeError(f"{name}: first request failed: {res.error or 'no content'}\n{tail}")
        srv.cold_start_first_answer_s = time.perf_counter() - srv.t_spawn
        srv.cold_start_foreign_cpu = probe.fraction()
        if srv.cold_start_foreign_cpu < QUIET or attempt == retries:
            break
        print(f"  {name}: cold start disturbed ({srv.cold_start_foreign_cpu:.0%}), redoing", file=sys.stderr)
        stop_server(srv)
    return srv


def measure(
    client: httpx.Client,
    srv: Server,
    pids: list[int],
    messages: list[dict[str, str]],
    max_tokens: int,
    retries: int,
) -> tuple[StreamResult, float, int]:
    """One timed request, redone (after waiting for quiet) when other load disturbed it.

    Returns the result, the foreign CPU share during it and the number of redos.
    """
    for attempt in range(retries + 1):
        if attempt:
            wait_until_quiet(60.0)
        probe = ForeignLoad(pids)
        res = stream_chat(client, srv.base_url, messages, max_tokens, srv.model)
        share = probe.fraction()
        if share < QUIET or attempt == retries:
            break
        print(f"  {srv.name}: discarded ({share:.0%} foreign cpu), redoing", file=sys.stderr)
    return res, share, attempt


def figures(srv: Server, runs: list[StreamResult], foreign: list[float]) -> dict[str, Any]:
    """Aggregate the runs of one server (``foreign``: other CPU load per run)."""
    ok = [r for r in runs if not r.error]
    quiet = [r for r, f in zip(runs, foreign, strict=True) if not r.error and f < QUIET]
    return {
        "cmd": " ".join(srv.cmd),
        "model": srv.model,
        "requests_ok": len(ok),
        "requests_failed": len(runs) - len(ok),
        "decode_tps_median": median([r.decode_tps for r in ok]),
        "decode_tps_all": [r.decode_tps for r in ok],
        "decode_tps_median_quiet": median([r.decode_tps for r in quiet]),
        "quiet_requests": len(quiet),
        "ttft_p50_s": percentile([r.ttft for r in ok], 50),
        "ttft_max_s": max((r.ttft for r in ok), default=float("nan")),
        "total_s_median": median([r.total for r in ok]),
        "completion_tokens_median": median([float(r.completion_tokens) for r in ok]),
        "prompt_tokens": ok[0].prompt_tokens if ok else None,
        "usage_reported": all(r.usage_reported for r in ok) if ok else None,
        "cold_start_healthy_s": srv.cold_start_healthy_s,
        "cold_start_first_answer_s": srv.cold_start_first_answer_s,
        "cold_start_foreign_cpu": srv.cold_start_foreign_cpu,
        "rss_mb_after": rss_mb(srv.proc.pid),
        "foreign_cpu_per_request": foreign,
        "errors": sorted({r.error for r in runs if r.error})[:3],
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5, help="measured requests per server")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interference-cmd", help="override; may use {port}")
    p.add_argument("--llama-server", help="path to llama-server (default: build/cached)")
    p.add_argument("--retries", type=int, default=3, help="redos of a request disturbed by load")
    p.add_argument("--wait-quiet", type=float, default=120.0, help="max s to wait for an idle CPU")
    p.add_argument("--skip-baseline", action="store_true", help="only run interference")
    p.add_argument("--skip-interference", action="store_true", help="only run llama-server")
    p.add_argument("--show-text", action="store_true", help="include one reply per server")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    gguf = embedded_gguf()
    t = str(args.threads)
    plan: list[tuple[str, list[str], int]] = []
    if not args.skip_interference:
        port = free_port()
        icmd = interference_cmd(args.interference_cmd, port, ["--threads", t])
        plan.append(("interference", icmd, port))
    if not args.skip_baseline:
        binary = llama_server_binary(args.llama_server)
        port = free_port()
        extra = ["-t", t, "-tb", t, "-c", "4096", "-np", "1"]
        plan.append(("llama-server", llama_server_cmd(binary, gguf, port, extra), port))
    if not plan:
        sys.exit("nothing to run")
    gguf.read_bytes()  # same page-cache state for every server's cold start
    busy_before = wait_until_quiet(args.wait_quiet)

    messages = [{"role": "user", "content": LONG_PROMPT}]
    servers: list[Server] = []
    runs: dict[str, list[StreamResult]] = {}
    texts: dict[str, str] = {}
    foreign: dict[str, list[float]] = {}
    retried: dict[str, int] = {}
    with httpx.Client(timeout=600.0) as client:
        try:
            for name, cmd, port in plan:
                print(f"starting {name}: {' '.join(cmd)}", file=sys.stderr)
                servers.append(cold_start(name, cmd, port, client, args.retries))
            idle = {s.name: idle_cpu_cores(s.proc.pid) for s in servers}
            load = ForeignLoad([s.proc.pid for s in servers])
            for srv in servers:  # one full-length warm-up each
                stream_chat(client, srv.base_url, messages, args.max_tokens, srv.model)
                runs[srv.name], foreign[srv.name], retried[srv.name] = [], [], 0
            for i in range(args.requests):
                for srv in servers:
                    pids = [s.proc.pid for s in servers]
                    res, share, redo = measure(client, srv, pids, messages, args.max_tokens, args.retries)
                    foreign[srv.name].append(share)
                    retried[srv.name] += redo
                    runs[srv.name].append(res)
                    texts.setdefault(srv.name, res.text)
                    print(
                        f"[{i + 1}/{args.requests}] {srv.name}: {res.completion_tokens} tok, "
                        f"ttft {res.ttft:.3f}s, {res.decode_tps:.1f} tok/s, "
                        f"foreign cpu {foreign[srv.name][-1]:.0%} {res.error}",
                        file=sys.stderr,
                    )
            report: dict[str, Any] = {
                "benchmark": "single_stream",
                "machine": machine_info(),
                "cpu_busy_before_start": busy_before,
                "foreign_cpu_during_run": load.fraction(),
                "gguf": str(gguf),
                "prompt": LONG_PROMPT,
                "max_tokens": args.max_tokens,
                "requests_per_server": args.requests,
                "servers": {
                    s.name: figures(s, runs[s.name], foreign[s.name])
                    | {"redone": retried[s.name], "idle_cpu_cores": idle[s.name]}
                    for s in servers
                },
            }
        finally:
            for srv in servers:
                stop_server(srv)

    if args.show_text:
        report["sample_text"] = texts
    srv_fig = report["servers"]
    if "interference" in srv_fig and "llama-server" in srv_fig:
        a, b = srv_fig["interference"], srv_fig["llama-server"]
        report["ratios_interference_over_llama_server"] = {
            key: ratio(a[key], b[key])
            for key in (
                "decode_tps_median",
                "decode_tps_median_quiet",
                "ttft_p50_s",
                "cold_start_healthy_s",
                "cold_start_first_answer_s",
                "rss_mb_after",
            )
        }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
