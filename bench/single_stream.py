"""Single-stream benchmark: interference vs llama-server on the same GGUF.

Both servers are started (one after the other, so cold starts do not overlap),
then identical streaming requests alternate A/B/A/B. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LONG_PROMPT,
    Server,
    StreamResult,
    embedded_gguf,
    free_port,
    machine_info,
    median,
    percentile,
    ratio,
    rounded,
    rss_mb,
    start_server,
    stop_server,
    stream_chat,
)

FIRST_PROMPT = [{"role": "user", "content": "Say hello in one short sentence."}]


def interference_cmd(template: str | None, port: int, extra: list[str]) -> list[str]:
    """Command line for our server; ``template`` may contain ``{port}``."""
    if template:
        return shlex.split(template.format(port=port))
    exe = Path(sys.executable).with_name("interference")
    return [str(exe), "serve", "--port", str(port), *extra]


def llama_server_cmd(binary: Path, gguf: Path, port: int, extra: list[str]) -> list[str]:
    return [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), *extra]


def cold_start(name: str, cmd: list[str], port: int, client: httpx.Client) -> Server:
    """Start a server and time spawn -> healthy -> first short answer completed."""
    srv = start_server(name, cmd, port)
    res = stream_chat(client, srv.base_url, FIRST_PROMPT, 16, srv.model)
    if res.error or res.content_chunks == 0:
        stop_server(srv)
        raise RuntimeError(f"{name}: first request failed: {res.error or 'no content'}")
    srv.cold_start_first_answer_s = time.perf_counter() - srv.t_spawn
    return srv


def figures(srv: Server, runs: list[StreamResult]) -> dict[str, Any]:
    """Aggregate the runs of one server."""
    ok = [r for r in runs if not r.error]
    return {
        "cmd": " ".join(srv.cmd),
        "model": srv.model,
        "requests_ok": len(ok),
        "requests_failed": len(runs) - len(ok),
        "decode_tps_median": median([r.decode_tps for r in ok]),
        "decode_tps_all": [r.decode_tps for r in ok],
        "ttft_p50_s": percentile([r.ttft for r in ok], 50),
        "ttft_max_s": max((r.ttft for r in ok), default=float("nan")),
        "total_s_median": median([r.total for r in ok]),
        "completion_tokens_median": median([float(r.completion_tokens) for r in ok]),
        "prompt_tokens": ok[0].prompt_tokens if ok else None,
        "usage_reported": all(r.usage_reported for r in ok) if ok else None,
        "cold_start_healthy_s": srv.cold_start_healthy_s,
        "cold_start_first_answer_s": srv.cold_start_first_answer_s,
        "rss_mb_after": rss_mb(srv.proc.pid),
        "errors": sorted({r.error for r in runs if r.error})[:3],
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5, help="measured requests per server")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interference-cmd", help="override; may use {port}")
    p.add_argument("--llama-server", help="path to llama-server (default: build/cached)")
    p.add_argument("--skip-baseline", action="store_true", help="only run interference")
    p.add_argument("--skip-interference", action="store_true", help="only run llama-server")
    p.add_argument("--show-text", action="store_true", help="include one reply per server")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    gguf = embedded_gguf()
    t = str(args.threads)
    plan: list[tuple[str, list[str], int]] = []
    if not args.skip_interference:
        port = free_port()
        icmd = interference_cmd(args.interference_cmd, port, ["--threads", t])
        plan.append(("interference", icmd, port))
    if not args.skip_baseline:
        if args.llama_server:
            binary = Path(args.llama_server)
        else:
            from baseline import ensure_llama_server

            binary = ensure_llama_server()
        port = free_port()
        extra = ["-t", t, "-tb", t, "-c", "4096", "-np", "1"]
        plan.append(("llama-server", llama_server_cmd(binary, gguf, port, extra), port))
    if not plan:
        sys.exit("nothing to run")

    messages = [{"role": "user", "content": LONG_PROMPT}]
    servers: list[Server] = []
    runs: dict[str, list[StreamResult]] = {}
    texts: dict[str, str] = {}
    with httpx.Client(timeout=600.0) as client:
        try:
            for name, cmd, port in plan:
                print(f"starting {name}: {' '.join(cmd)}", file=sys.stderr)
                servers.append(cold_start(name, cmd, port, client))
            for srv in servers:  # one full-length warm-up each
                stream_chat(client, srv.base_url, messages, args.max_tokens, srv.model)
                runs[srv.name] = []
            for i in range(args.requests):
                for srv in servers:
                    res = stream_chat(client, srv.base_url, messages, args.max_tokens, srv.model)
                    runs[srv.name].append(res)
                    texts.setdefault(srv.name, res.text)
                    print(
                        f"[{i + 1}/{args.requests}] {srv.name}: {res.completion_tokens} tok, "
                        f"ttft {res.ttft:.3f}s, {res.decode_tps:.1f} tok/s {res.error}",
                        file=sys.stderr,
                    )
            report: dict[str, Any] = {
                "benchmark": "single_stream",
                "machine": machine_info(),
                "gguf": str(gguf),
                "prompt": LONG_PROMPT,
                "max_tokens": args.max_tokens,
                "requests_per_server": args.requests,
                "servers": {s.name: figures(s, runs[s.name]) for s in servers},
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
                "ttft_p50_s",
                "cold_start_healthy_s",
                "cold_start_first_answer_s",
                "rss_mb_after",
            )
        }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
