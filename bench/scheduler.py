"""Scheduler benchmark: the workloads where users wait, interference against llama-server in one run.

Workloads (each repeated ``--reps`` times; ``--quick``: one repetition and smaller sizes):

- ``cold_turns``: the first turn of N conversations (distinct ~300-token prompts), one request at a
  time, the two servers taking each request in alternation → median TTFT;
- ``storm``: N new conversations at once on 8 slots → median and p95 TTFT (one server, then the other,
  the first alternating by repetition, as in ``steady_c8``);
- ``steady_c8``: 8 concurrent streams of 128 tokens → aggregate tok/s and inter-token p95;
- ``agent_turns``: S sessions of a long prompt (a shared preamble of ~5k tokens plus a session part)
  growing by ~320 tokens a turn, interleaved → the cold turn and turns 2+ TTFT (the last turn stays
  within the embedded model's 8192-token context);
- ``after_restart``: a session's preamble is cached, the server restarts, a new session with the same
  preamble → its TTFT over a cold turn of the same length (interference's ``--cache-disk``; llama-server
  has no automatic equivalent, so its figure is a cold turn);
- ``c1_decode``: one stream of 128 tokens → decode tok/s.

``steady_c8`` and ``c1_decode`` also report ``serving_cpu_ms_per_token``: the CPU time per generated token
of every thread of the server but its ``--threads`` busiest ones (the compute threads): its HTTP and
event-loop side, which on a machine with as many cores as compute threads takes its time from the
decode (from ``/proc/<pid>/task/*/schedstat``, nanoseconds per thread).

Both servers use the same GGUF, threads and slots; llama-server runs with ``--kv-unified``. Prints one
JSON object: per workload and server the median over repetitions, the spread (min, max) and the
ratio interference / llama-server. Lower is better for times, higher for tok/s.

Usage::

    python bench/scheduler.py [--quick] [--only cold_turns,storm] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
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
    percentile,
    ratio,
    rounded,
    start_server,
    stop_server,
)
from _system import machine_info, thread_cpu_ns
from prompt_cache import WORDS
from single_stream import interference_cmd, llama_server_binary, llama_server_cmd

WORKLOADS = ("cold_turns", "storm", "steady_c8", "agent_turns", "after_restart", "c1_decode")


def words(n: int, seed: int) -> str:
    """Text of about ``1.45 * n`` tokens of the embedded model, different for every seed."""
    return " ".join(
        WORDS[(seed * 7 + i * 3 + i * i) % len(WORDS)] + str((seed + i) % 97) for i in range(n // 2)
    )


class Stream:
    """Timings of one streamed chat completion: TTFT and the gaps between content chunks."""

    def __init__(self) -> None:
        self.ttft = float("nan")
        self.gaps: list[float] = []
        self.tokens = 0
        self.span = float("nan")
        self.text = ""
        self.error = ""


def stream(client: httpx.Client, srv: Server, messages: list[dict[str, str]], max_tokens: int) -> Stream:
    body = {
        "model": srv.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out, last, first = Stream(), 0.0, 0.0
    parts: list[str] = []
    t0 = time.perf_counter()
    try:
        with client.stream("POST", f"{srv.base_url}/v1/chat/completions", json=body, timeout=900) as r:
            if r.status_code != 200:
                out.error = r.read().decode(errors="replace")[:300]
                return out
            for line in r.iter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    out.tokens = int(chunk["usage"].get("completion_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter() - t0
                        if not parts:
                            out.ttft = first = now
                        else:
                            out.gaps.append(now - last)
                        last = now
                        parts.append(content)
    except (httpx.HTTPError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.span = last - first
    out.text = "".join(parts)
    return out


def concurrent(jobs: Sequence[Callable[[], Stream]]) -> tuple[list[Stream], float]:
    """Run the jobs at once; their results and the wall time."""
    results: list[Stream] = [Stream() for _ in jobs]

    def run(i: int) -> None:
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def serving_cpu_ms(before: dict[str, int], after: dict[str, int], compute_threads: int) -> float:
    """Milliseconds of CPU of all threads but the ``compute_threads`` busiest, between two readings."""
    spent = sorted((ns - before.get(tid, 0) for tid, ns in after.items()), reverse=True)
    return sum(spent[compute_threads:]) / 1e6 if spent else float("nan")


def chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ workloads: one repetition each


def cold_turns(client: httpx.Client, servers: list[Server], size: dict[str, int], rep: int) -> dict[str, Any]:
    ttft: dict[str, list[float]] = {s.name: [] for s in servers}
    for conv in range(size["conversations"]):
        messages = chat(f"Conversation {rep}-{conv}. Notes: " + words(280, 1000 * rep + conv), "Summarise.")
        for srv in servers:  # in alternation: load from other processes hits both alike
            ttft[srv.name].append(stream(client, srv, messages, 16).ttft)
    return {name: {"ttft_median_s": median(v)} for name, v in ttft.items()}


def in_turn(servers: list[Server], rep: int) -> list[Server]:
    """The servers in the order of this repetition: who goes first alternates. A workload that runs
    whole on one server, then on the other, meets the shared host's slow minutes in that order, and in
    one run the second of three back-to-back storms was the slowest every time, whichever server it
    was."""
    return servers if rep % 2 == 0 else servers[::-1]


def storm(client: httpx.Client, servers: list[Server], size: dict[str, int], rep: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for srv in in_turn(servers, rep):
        prompts = [
            chat(f"Storm {rep}-{i}. " + words(280, 50_000 + 100 * rep + i), "Go.")
            for i in range(size["storm"])
        ]
        jobs = [functools.partial(stream, client, srv, m, 16) for m in prompts]
        results, _ = concurrent(jobs)
        ttfts = [r.ttft for r in results]
        out[srv.name] = {"ttft_median_s": median(ttfts), "ttft_p95_s": percentile(ttfts, 95)}
    return out


def steady(client: httpx.Client, servers: list[Server], size: dict[str, int], rep: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for srv in in_turn(servers, rep):
        prompts = [
            chat("You are a writer.", f"Essay {rep}-{i}: write about " + words(20, i)) for i in range(8)
        ]
        jobs = [functools.partial(stream, client, srv, m, size["tokens"]) for m in prompts]
        before = thread_cpu_ns(srv.proc.pid)
        results, wall = concurrent(jobs)
        serving = serving_cpu_ms(before, thread_cpu_ns(srv.proc.pid), size["threads"])
        gaps = [g for r in results for g in r.gaps]
        tokens = sum(r.tokens for r in results)
        out[srv.name] = {
            "aggregate_tok_s": tokens / wall,
            "inter_token_p95_s": percentile(gaps, 95),
            "serving_cpu_ms_per_token": serving / tokens if tokens else float("nan"),
        }
    return out


def agent_turns(
    client: httpx.Client, servers: list[Server], size: dict[str, int], rep: int
) -> dict[str, Any]:
    preamble = f"You are a coding agent ({rep}). Tools and rules: " + words(size["agent_prompt"], 77 + rep)
    hist = {
        s.name: [
            chat(preamble + f" Session {k}.", f"Task {k}: " + words(300, k)) for k in range(size["sessions"])
        ]
        for s in servers
    }
    first: dict[str, list[float]] = {s.name: [] for s in servers}
    later: dict[str, list[float]] = {s.name: [] for s in servers}
    for turn in range(size["turns"]):
        for k in range(size["sessions"]):
            for srv in servers:
                messages = hist[srv.name][k]
                res = stream(client, srv, messages, 24)
                (first if turn == 0 else later)[srv.name].append(res.ttft)
                messages.append({"role": "assistant", "content": res.text})
                messages.append(
                    {"role": "user", "content": f"Tool result {turn}: " + words(200, turn * 10 + k)}
                )
    return {
        s.name: {"cold_turn_ttft_s": median(first[s.name]), "later_turns_ttft_s": median(later[s.name])}
        for s in servers
    }


def c1_decode(client: httpx.Client, servers: list[Server], size: dict[str, int], rep: int) -> dict[str, Any]:
    tps: dict[str, list[float]] = {s.name: [] for s in servers}
    serving: dict[str, list[float]] = {s.name: [] for s in servers}
    for i in range(2):
        messages = chat("You are a writer.", f"Story {rep}-{i}: write a long story about " + words(12, i))
        for srv in servers:
            before = thread_cpu_ns(srv.proc.pid)
            res = stream(client, srv, messages, size["tokens"])
            cpu = serving_cpu_ms(before, thread_cpu_ns(srv.proc.pid), size["threads"])
            tps[srv.name].append((len(res.gaps)) / res.span if res.span > 0 else float("nan"))
            serving[srv.name].append(cpu / res.tokens if res.tokens else float("nan"))
    return {
        name: {"decode_tok_s": median(v), "serving_cpu_ms_per_token": median(serving[name])}
        for name, v in tps.items()
    }


def after_restart(
    client: httpx.Client, spec: tuple[list[str], int], size: dict[str, int], rep: int, name: str
) -> dict[str, Any]:
    """Start, cache a session's preamble, restart, time a new session with it against a cold one."""
    cmd, port = spec
    preamble = f"You are agent {rep} of the restart test. Rules: " + words(size["restart_prompt"], 4242 + rep)
    srv = start_server(name, cmd, port)
    try:
        stream(client, srv, chat(preamble, "First session: begin."), 8)
    finally:
        stop_server(srv)
    srv = start_server(name, cmd, port)
    try:
        stream(client, srv, chat("Warm up.", "Hi"), 4)  # the model is loaded
        restored = stream(client, srv, chat(preamble, "Second session: begin."), 8)
        cold = stream(client, srv, chat(f"Cold {rep}. " + preamble, "Second session: begin."), 8)
    finally:
        stop_server(srv)
    return {
        "restored_ttft_s": restored.ttft,
        "cold_ttft_s": cold.ttft,
        "restored_over_cold": ratio(restored.ttft, cold.ttft),
    }


CACHE_METRICS = ("prompt_cache_seconds_total", "prompt_cache_pause_max_seconds", "prompt_cache_hits_total")


def cache_metrics(srv: Server) -> dict[str, float]:
    """Our prompt cache's time on the scheduler thread: in all, and the longest one admission waited."""
    text = httpx.get(f"{srv.base_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in (
            "prompt_cache_seconds_total",
            "prompt_cache_pause_max_seconds",
            "prompt_cache_hits_total",
        ):
            if line.startswith(f"interference_engine_{name}"):
                out[name] = out.get(name, 0.0) + float(line.rpartition(" ")[2])
    return out


# ------------------------------------------------------------------ driver

SIZES = {
    "full": {
        "conversations": 24, "storm": 24, "tokens": 128, "sessions": 4, "turns": 6,
        "agent_prompt": 3450, "restart_prompt": 5000,
    },
    "quick": {
        "conversations": 12, "storm": 12, "tokens": 64, "sessions": 2, "turns": 3,
        "agent_prompt": 1500, "restart_prompt": 2000,
    },
}  # fmt: skip


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max per server and figure over the repetitions, and interference/llama-server."""
    out: dict[str, Any] = {}
    names = {name for rep in reps for name in rep}
    for name in sorted(names):
        figures = {k for rep in reps for k in rep.get(name, {})}
        out[name] = {}
        for key in sorted(figures):
            values = [float(rep[name][key]) for rep in reps if rep.get(name, {}).get(key) is not None]
            out[name][key] = {
                "median": median(values),
                "min": min(values, default=None),
                "max": max(values, default=None),
            }
    if "interference" in out and "llama-server" in out:
        a, b = out["interference"], out["llama-server"]
        out["ratio"] = {k: ratio(a[k]["median"], b[k]["median"]) for k in a if k in b}
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repetition, smaller sizes")
    p.add_argument("--reps", type=int, default=0, help="repetitions (default: 3, 1 with --quick)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interference-args", default="", help="extra flags for interference serve")
    p.add_argument(
        "--interference-env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for interference only (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-cache-disk", action="store_true", help="run interference without --cache-disk")
    p.add_argument("--llama-server", help="path to llama-server (default: the cached build)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    size = {**SIZES["quick" if args.quick else "full"], "threads": args.threads}
    reps = args.reps or (1 if args.quick else 3)
    only = [w for w in args.only.split(",") if w]
    t, np_ = str(args.threads), str(args.parallel)
    disk = Path(tempfile.mkdtemp(prefix="bench-cache-disk-"))
    ours = ["--parallel", np_, "--threads", t, "--no-embeddings", *args.interference_args.split()]
    gguf = embedded_gguf()
    binary = llama_server_binary(args.llama_server)
    theirs = ["-t", t, "-tb", t, "-c", str(2048 * args.parallel), "-np", np_, "--kv-unified"]
    env = ["env", *args.interference_env] if args.interference_env else []
    specs = {
        "interference": (
            env
            + interference_cmd(
                None,
                (p := free_port()),
                [*ours, *([] if args.no_cache_disk else ["--cache-disk", str(disk)])],
            ),
            p,
        ),
        "llama-server": (llama_server_cmd(binary, gguf, (q := free_port()), theirs), q),
    }
    shared = {
        "cold_turns": cold_turns, "storm": storm, "steady_c8": steady, "agent_turns": agent_turns,
        "c1_decode": c1_decode,
    }  # fmt: skip
    results: dict[str, Any] = {}
    with httpx.Client(timeout=900.0) as client, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, disk, ignore_errors=True)
        for workload in only:
            rows: list[dict[str, Any]] = []
            for rep in range(reps):
                print(f"{workload} repetition {rep + 1}/{reps}", file=sys.stderr)
                if workload == "after_restart":
                    # Each server on its own: ours restarts on the same --cache-disk directory.
                    rows.append(
                        {name: after_restart(client, spec, size, rep, name) for name, spec in specs.items()}
                    )
                    continue
                servers = [start_server(name, cmd, port) for name, (cmd, port) in specs.items()]
                try:
                    stream(client, servers[0], chat("Warm up.", "Hi"), 4)
                    stream(client, servers[1], chat("Warm up.", "Hi"), 4)
                    rows.append(shared[workload](client, servers, size, rep))
                    rows[-1]["interference"].update(cache_metrics(servers[0]))
                finally:
                    for srv in servers:
                        stop_server(srv)
            results[workload] = summarise(rows)
            print(json.dumps(rounded({workload: results[workload]})), file=sys.stderr)
    report = {
        "benchmark": "scheduler",
        "machine": machine_info(),
        "gguf": str(gguf),
        "slots": args.parallel,
        "threads": args.threads,
        "repetitions": reps,
        "sizes": size,
        "interference_cmd": " ".join(specs["interference"][0]),
        "llama_server_cmd": " ".join(specs["llama-server"][0]),
        "results": results,
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
