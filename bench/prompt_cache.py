"""Prompt-cache benchmark: many conversations over few slots, interference vs llama-server.

Workload (one request at a time): N conversations take turns round-robin for T turns. Each has its
own system prompt of about 100 tokens, each turn adds a user message of about 90 tokens, and every
answer is 24 tokens (temperature 0). With more conversations than slots, a server without a host-RAM
prompt cache prefills the whole history on every turn. A second workload: 64 conversations whose first
turns share one ~500-token system prompt. Both servers run at once and take each turn in alternation,
so load from other processes hits both alike. Prints one JSON object.

Usage::

    python bench/prompt_cache.py [--conversations 24,64] [--turns 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Server,
    embedded_gguf,
    exit_on_sigterm,
    free_port,
    median,
    ratio,
    rounded,
    stop_server,
    stream_chat,
)
from _system import ForeignLoad, machine_info, rss_mb, wait_until_quiet
from single_stream import cold_start, interference_cmd, llama_server_binary, llama_server_cmd

WORDS = (
    "river",
    "mountain",
    "lantern",
    "harbor",
    "orchard",
    "meadow",
    "glacier",
    "canyon",
    "village",
    "market",
    "bridge",
    "tower",
    "garden",
    "forest",
    "island",
    "desert",
    "valley",
    "castle",
    "library",
    "workshop",
)
ANSWER_TOKENS = 24  # the default of --answer-tokens


def _words(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3 + i * i) % len(WORDS)] for i in range(n))


def system_prompt(conv: int) -> str:
    """About 100 tokens, different for every conversation."""
    return f"You are assistant number {conv}. Your notes: " + _words(88, conv)


def user_turn(conv: int, turn: int) -> str:
    """About 90 tokens."""
    return f"Question {turn} from user {conv}: tell me about " + _words(80, conv * 31 + turn)


SHARED_SYSTEM = "You are a careful assistant for a travel company. Policies: " + _words(470, 999)


def conversations(
    client: httpx.Client, servers: list[Server], n_conv: int, turns: int, answer: int
) -> dict[str, dict[str, Any]]:
    """Round-robin turns, the servers taking each turn in alternation (so load spikes hit both).

    Returns, per server, TTFT per turn (median over the conversations).
    """
    hist = {
        s.name: [[{"role": "system", "content": system_prompt(c)}] for c in range(n_conv)] for s in servers
    }
    ttft: dict[str, dict[int, list[float]]] = {s.name: {t: [] for t in range(1, turns + 1)} for s in servers}
    prompt_tokens: dict[str, dict[int, list[float]]] = {
        s.name: {t: [] for t in range(1, turns + 1)} for s in servers
    }
    errors = dict.fromkeys(hist, 0)
    probe = ForeignLoad([])
    for turn in range(1, turns + 1):
        for conv in range(n_conv):
            for srv in servers:
                messages = hist[srv.name][conv]
                messages.append({"role": "user", "content": user_turn(conv, turn)})
                res = stream_chat(client, srv.base_url, messages, answer, srv.model)
                errors[srv.name] += bool(res.error)
                ttft[srv.name][turn].append(res.ttft)
                prompt_tokens[srv.name][turn].append(float(res.prompt_tokens))
                messages.append({"role": "assistant", "content": res.text})
        for srv in servers:
            p50 = median(ttft[srv.name][turn])
            print(f"  {srv.name} {n_conv} conv turn {turn}: ttft p50 {p50:.3f}s", file=sys.stderr)
    out: dict[str, dict[str, Any]] = {}
    if len(servers) == 2:
        # Each request against the other server's same request, sent right after it: robust to load
        # that comes and goes over the run.
        a, b = (ttft[s.name] for s in servers)
        pairs = [x / y for t in (4, 5) if t in a for x, y in zip(a[t], b[t], strict=True) if y > 0]
        out["paired"] = {"median_ratio_turns_4_5": median(pairs), "first_over_second": servers[0].name}
    for srv in servers:
        by_turn = ttft[srv.name]
        late = [x for t in (4, 5) if t in by_turn for x in by_turn[t]]
        out[srv.name] = {
            "ttft_median_by_turn_s": {str(t): median(v) for t, v in by_turn.items()},
            "prompt_tokens_median_by_turn": {str(t): median(v) for t, v in prompt_tokens[srv.name].items()},
            "ttft_median_turns_4_5_s": median(late),
            "turn5_over_turn2": ratio(median(by_turn.get(5, [])), median(by_turn.get(2, []))),
            "errors": errors[srv.name],
            "foreign_cpu": probe.fraction(),
        }
    return out


def shared_prefix(
    client: httpx.Client, servers: list[Server], n_conv: int, answer: int
) -> dict[str, dict[str, Any]]:
    """First turns of conversations that open with the same ~480-token system prompt.

    Each is paired with a cold first turn of the same length (the same text behind a distinct opening,
    so nothing is shared) sent right after it, so load from other processes hits both alike.
    """
    shared: dict[str, list[float]] = {s.name: [] for s in servers}
    cold: dict[str, list[float]] = {s.name: [] for s in servers}
    prompt_tokens = 0
    for conv in range(n_conv):
        question = {"role": "user", "content": user_turn(conv, 1)}
        warm = [{"role": "system", "content": SHARED_SYSTEM}, question]
        fresh = [{"role": "system", "content": f"Desk {conv} of {n_conv}. {SHARED_SYSTEM}"}, question]
        for srv in servers:
            res = stream_chat(client, srv.base_url, warm, answer, srv.model)
            shared[srv.name].append(res.ttft)
            prompt_tokens = res.prompt_tokens
            cold[srv.name].append(stream_chat(client, srv.base_url, fresh, answer, srv.model).ttft)
    return {
        name: {
            "prompt_tokens": prompt_tokens,
            "ttft_first_s": shared[name][0],
            "ttft_shared_median_s": median(shared[name][1:]),
            "ttft_cold_median_s": median(cold[name]),
            "shared_over_cold": ratio(median(shared[name][1:]), median(cold[name])),
        }
        for name in shared
    }


def engine_metrics(srv: Server) -> dict[str, float]:
    """Our engine's prompt-cache counters from /metrics (empty for llama-server)."""
    try:
        text = httpx.get(f"{srv.base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("interference_engine_") and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            key = sample.split("{", 1)[0].removeprefix("interference_engine_")
            if "cache" in key or key in ("steps_total", "decode_seconds_total"):
                out[key] = float(value)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conversations", default="24,64", help="comma-separated conversation counts")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--shared", type=int, default=64, help="conversations sharing one system prompt")
    p.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS, help="max_tokens of every answer")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-ram", type=int, default=2048, help="our --cache-ram (MiB)")
    p.add_argument("--interference-cmd", help="override; may use {port}")
    p.add_argument("--llama-server", help="path to llama-server (default: build/cached)")
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-interference", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    counts = [int(x) for x in args.conversations.split(",") if x.strip()]
    t, np_ = str(args.threads), str(args.parallel)
    ctx = str(2048 * args.parallel)
    plan: list[tuple[str, list[str], int]] = []
    if not args.skip_interference:
        port = free_port()
        extra = ["--parallel", np_, "--threads", t, "--cache-ram", str(args.cache_ram), "--no-embeddings"]
        plan.append(("interference", interference_cmd(args.interference_cmd, port, extra), port))
    if not args.skip_baseline:
        binary = llama_server_binary(args.llama_server)
        port = free_port()
        extra = ["-t", t, "-tb", t, "-c", ctx, "-np", np_]
        plan.append(("llama-server", llama_server_cmd(binary, embedded_gguf(), port, extra), port))
    if not plan:
        sys.exit("nothing to run")
    busy_before = wait_until_quiet(args.wait_quiet)
    results: dict[str, dict[str, Any]] = {}
    paired: dict[str, dict[str, Any]] = {}
    servers: list[Server] = []
    with httpx.Client(timeout=900.0) as client:
        try:
            for name, cmd, port in plan:
                print(f"starting {name}: {' '.join(cmd)}", file=sys.stderr)
                servers.append(cold_start(name, cmd, port, client, retries=0))
                results[name] = {"cmd": " ".join(cmd)}
            for n_conv in counts:
                rows = conversations(client, servers, n_conv, args.turns, args.answer_tokens)
                paired[str(n_conv)] = rows.pop("paired", {})
                for name, row in rows.items():
                    results[name][f"conversations_{n_conv}"] = row
                for srv in servers:
                    results[srv.name][f"rss_mb_after_{n_conv}"] = rss_mb(srv.proc.pid)
            for name, row in shared_prefix(client, servers, args.shared, args.answer_tokens).items():
                results[name]["shared_prefix"] = row
            for srv in servers:
                results[srv.name]["rss_mb_after"] = rss_mb(srv.proc.pid)
                results[srv.name]["engine"] = engine_metrics(srv) if srv.name == "interference" else {}
        finally:
            for srv in servers:
                stop_server(srv)

    report: dict[str, Any] = {
        "benchmark": "prompt_cache",
        "machine": machine_info(),
        "cpu_busy_before_start": busy_before,
        "gguf": str(embedded_gguf()),
        "slots": args.parallel,
        "ctx_per_slot": 2048,
        "threads": args.threads,
        "answer_tokens": args.answer_tokens,
        "turns": args.turns,
        "servers": results,
    }
    if "interference" in results and "llama-server" in results:
        a, b = results["interference"], results["llama-server"]
        report["ratios_interference_over_llama_server"] = {
            **{
                f"ttft_turns_4_5_{n}_conversations": ratio(
                    a[f"conversations_{n}"]["ttft_median_turns_4_5_s"],
                    b[f"conversations_{n}"]["ttft_median_turns_4_5_s"],
                )
                for n in counts
            },
            "shared_prefix_ttft": ratio(
                a["shared_prefix"]["ttft_shared_median_s"], b["shared_prefix"]["ttft_shared_median_s"]
            ),
            "rss_mb_after": ratio(a["rss_mb_after"], b["rss_mb_after"]),
            "paired_ttft_turns_4_5": {n: row.get("median_ratio_turns_4_5") for n, row in paired.items()},
        }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
