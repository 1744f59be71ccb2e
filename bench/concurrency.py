"""Concurrency benchmark: continuous batching, interference vs llama-server.

For each concurrency level C, C streaming requests (distinct prompts) are fired
at once; aggregate completion tok/s, TTFT percentiles and cut/starved streams
are recorded. A growing multi-turn chat then compares TTFT of the first and the
last turn. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Server,
    StreamResult,
    embedded_gguf,
    exit_on_sigterm,
    free_port,
    median,
    percentile,
    ratio,
    rounded,
    stop_server,
    stream_chat,
)
from _system import ForeignLoad, machine_info, rss_mb, wait_until_quiet
from single_stream import QUIET, cold_start, interference_cmd, llama_server_binary, llama_server_cmd

TOPICS = [
    "the printing press",
    "the steam engine",
    "the Roman roads",
    "the telescope",
    "the compass",
    "paper money",
    "the railway",
    "the telegraph",
    "vaccination",
    "the bicycle",
    "the lighthouse",
    "the windmill",
    "the clock",
    "glass making",
    "the canal system",
    "the postal service",
]
CHAT_FOLLOWUPS = [
    "Tell me more about that.",
    "Why did that matter?",
    "Who was involved?",
    "What happened next?",
    "Give an example.",
    "What were the downsides?",
    "How is it seen today?",
    "Summarise the key point.",
    "What surprised people?",
    "Anything else worth knowing?",
]


def essay_prompt(i: int, tag: str) -> list[dict[str, str]]:
    """Prompt ``i`` of a round; ``tag`` makes it new to the server's prefix cache."""
    topic = TOPICS[i % len(TOPICS)]
    text = f"[{tag}-{i}] Write a long, detailed essay about the history of {topic}. Use many paragraphs."
    return [{"role": "user", "content": text}]


def run_round(
    client: httpx.Client, srv: Server, conc: int, max_tokens: int, tag: str, retries: int = 0
) -> dict[str, Any]:
    """Fire ``conc`` streams at once; aggregate their timings.

    Every server gets the same prompts per ``tag``, each only once. A round during which
    other processes loaded the CPU is redone (up to ``retries`` times) with fresh prompts.
    """
    for attempt in range(retries + 1):
        if attempt:
            wait_until_quiet(60.0)
        probe = ForeignLoad([])  # the servers are our children, hence ours
        row = _round(client, srv, conc, max_tokens, f"{tag}.{attempt}")
        row["foreign_cpu"] = probe.fraction()
        row["redone"] = attempt
        if row["foreign_cpu"] < QUIET or attempt == retries:
            break
        print(f"  {srv.name} C={conc}: disturbed ({row['foreign_cpu']:.0%}), redoing", file=sys.stderr)
    return row


def _round(client: httpx.Client, srv: Server, conc: int, max_tokens: int, tag: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=conc) as pool:
        futs = [
            pool.submit(stream_chat, client, srv.base_url, essay_prompt(i, tag), max_tokens, srv.model)
            for i in range(conc)
        ]
        results: list[StreamResult] = [f.result() for f in futs]
    wall = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in results)
    ttfts = [r.ttft for r in results]
    return {
        "wall_s": wall,
        "completion_tokens": tokens,
        "aggregate_tps": tokens / wall if wall > 0 else float("nan"),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "per_stream_decode_tps_median": median([r.decode_tps for r in results]),
        "cut_or_starved": sum(r.starved for r in results),
        "errors": sum(bool(r.error) for r in results),
        "error_samples": sorted({r.error for r in results if r.error})[:2],
    }


def growing_chat(client: httpx.Client, srv: Server, turns: int, max_tokens: int) -> dict[str, Any]:
    """Multi-turn chat where every turn resends the whole history."""
    messages: list[dict[str, str]] = [
        {"role": "user", "content": "Tell me about the history of the printing press."}
    ]
    rows: list[dict[str, Any]] = []
    probe = ForeignLoad([])
    for turn in range(turns):
        res = stream_chat(client, srv.base_url, messages, max_tokens, srv.model)
        rows.append(
            {
                "turn": turn + 1,
                "ttft_s": res.ttft,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "error": res.error,
            }
        )
        messages.append({"role": "assistant", "content": res.text})
        messages.append({"role": "user", "content": CHAT_FOLLOWUPS[turn % len(CHAT_FOLLOWUPS)]})
    return {
        "ttft_first_turn_s": rows[0]["ttft_s"],
        "ttft_last_turn_s": rows[-1]["ttft_s"],
        "last_turn_over_first": ratio(rows[-1]["ttft_s"], rows[0]["ttft_s"]),
        "foreign_cpu": probe.fraction(),
        "turns": rows,
    }


def summarise(levels: dict[int, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median over rounds per level; starved and errors are summed."""
    out: dict[str, dict[str, Any]] = {}
    for conc, rounds in levels.items():
        out[str(conc)] = {
            "aggregate_tps": median([r["aggregate_tps"] for r in rounds]),
            "ttft_p50_s": median([r["ttft_p50_s"] for r in rounds]),
            "ttft_p95_s": median([r["ttft_p95_s"] for r in rounds]),
            "per_stream_decode_tps": median([r["per_stream_decode_tps_median"] for r in rounds]),
            "cut_or_starved": sum(r["cut_or_starved"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "rounds": rounds,
        }
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,4,8,16", help="comma-separated concurrency levels")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--parallel", type=int, default=8, help="server slots")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chat-turns", type=int, default=10)
    p.add_argument("--chat-max-tokens", type=int, default=96)
    p.add_argument("--interference-cmd", help="override; may use {port}")
    p.add_argument("--llama-server", help="path to llama-server (default: build/cached)")
    p.add_argument("--retries", type=int, default=3, help="redos of a start or round disturbed by load")
    p.add_argument("--wait-quiet", type=float, default=120.0, help="max s to wait for an idle CPU")
    p.add_argument("--kv-unified", action="store_true", help="llama-server gets --kv-unified")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-interference", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    t, np_ = str(args.threads), str(args.parallel)
    plan: list[tuple[str, list[str], int]] = []
    if not args.skip_interference:
        port = free_port()
        extra = ["--parallel", np_, "--threads", t]
        plan.append(("interference", interference_cmd(args.interference_cmd, port, extra), port))
    if not args.skip_baseline:
        binary = llama_server_binary(args.llama_server)
        port = free_port()
        ctx = str(2048 * args.parallel)
        extra = ["-t", t, "-tb", t, "-c", ctx, "-np", np_, *(["--kv-unified"] if args.kv_unified else [])]
        plan.append(("llama-server", llama_server_cmd(binary, embedded_gguf(), port, extra), port))
    if not plan:
        sys.exit("nothing to run")
    embedded_gguf().read_bytes()  # same page-cache state for every server's cold start
    busy_before = wait_until_quiet(args.wait_quiet)

    servers: list[Server] = []
    per_level: dict[str, dict[int, list[dict[str, Any]]]] = {}
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    with httpx.Client(timeout=900.0, limits=limits) as client:
        try:
            for name, cmd, port in plan:
                print(f"starting {name}: {' '.join(cmd)}", file=sys.stderr)
                servers.append(cold_start(name, cmd, port, client, args.retries))
                per_level[name] = {c: [] for c in levels}
            load = ForeignLoad([s.proc.pid for s in servers])
            for srv in servers:  # warm-up
                run_round(client, srv, 1, args.max_tokens, "warm-up")
            for conc in levels:
                for rnd in range(args.rounds):
                    for srv in servers:
                        row = run_round(client, srv, conc, args.max_tokens, f"c{conc}r{rnd}", args.retries)
                        per_level[srv.name][conc].append(row)
                        print(
                            f"C={conc} round {rnd + 1} {srv.name}: {row['aggregate_tps']:.1f} tok/s, "
                            f"ttft p50 {row['ttft_p50_s']:.2f}s, starved {row['cut_or_starved']}",
                            file=sys.stderr,
                        )
            chats = {s.name: growing_chat(client, s, args.chat_turns, args.chat_max_tokens) for s in servers}
            report: dict[str, Any] = {
                "benchmark": "concurrency",
                "machine": machine_info(),
                "cpu_busy_before_start": busy_before,
                "foreign_cpu_during_run": load.fraction(),
                "gguf": str(embedded_gguf()),
                "max_tokens": args.max_tokens,
                "rounds": args.rounds,
                "servers": {
                    s.name: {
                        "cmd": " ".join(s.cmd),
                        "cold_start_healthy_s": s.cold_start_healthy_s,
                        "cold_start_first_answer_s": s.cold_start_first_answer_s,
                        "cold_start_foreign_cpu": s.cold_start_foreign_cpu,
                        "levels": summarise(per_level[s.name]),
                        "growing_chat": chats[s.name],
                        "rss_mb_after": rss_mb(s.proc.pid),
                    }
                    for s in servers
                },
            }
        finally:
            for srv in servers:
                stop_server(srv)

    figs = report["servers"]
    if "interference" in figs and "llama-server" in figs:
        a, b = figs["interference"], figs["llama-server"]
        report["ratios_interference_over_llama_server"] = {
            "rss_mb_after": ratio(a["rss_mb_after"], b["rss_mb_after"]),
            "chat_ttft_last_turn": ratio(
                a["growing_chat"]["ttft_last_turn_s"], b["growing_chat"]["ttft_last_turn_s"]
            ),
            "levels": {
                lvl: {
                    key: ratio(a["levels"][lvl][key], b["levels"][lvl][key])
                    for key in ("aggregate_tps", "ttft_p50_s", "ttft_p95_s")
                }
                for lvl in a["levels"]
            },
        }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
