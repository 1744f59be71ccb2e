"""Does one heavy request stall everyone else's stream?

Eight greedy streams run on one server. While they run, requests whose preparation grows with the
input arrive, one kind at a time: a chat prompt of 100,000 characters (rendered and tokenized, then
refused for its length), and a ``json_schema`` response format with 60 properties (compiled to a
grammar, then answered). For each kind the script records the longest gap between two tokens of any
running stream while that request was being handled, and compares it with the streams' median gap,
which is one decode step. Prints one JSON object.

Usage::

    python bench/event_loop.py [--python PATH]   # PATH: the interpreter whose interference to start
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))


from _common import exit_on_sigterm, free_port, median, percentile, rounded, start_server, stop_server
from _system import machine_info

STREAMS = 8
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's end tokens: the streams run until max_tokens


def big_prompt() -> dict[str, Any]:
    text = ("The quick brown fox jumps over the lazy dog. " * 2300)[:100_000]
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "max_tokens": 4}


def big_schema() -> dict[str, Any]:
    props = {f"field_{i}": {"type": ["string", "integer", "boolean"][i % 3]} for i in range(60)}
    schema = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    return {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Fill in the form."}],
        "max_tokens": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "form", "schema": schema}},
    }


def run_stream(url: str, arrivals: list[float], stop: threading.Event) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": 1000,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                arrivals.append(time.perf_counter())
            if stop.is_set():
                return


def worst_gap(streams: list[list[float]], start: float, end: float) -> float:
    """The longest wait for a next token, among waits that overlap [start, end]."""
    worst = 0.0
    for arrivals in streams:
        for a, b in itertools.pairwise(arrivals):
            if b >= start and a <= end:
                worst = max(worst, b - a)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    port = free_port()
    cmd = [args.python, "-m", "interference", "serve", "--port", str(port), "--parallel", str(STREAMS + 1)]
    cmd += ["--threads", str(args.threads), "--no-embeddings", "--no-access-log"]
    srv = start_server("interference", cmd, port)
    url = f"http://127.0.0.1:{port}"
    streams: list[list[float]] = [[] for _ in range(STREAMS)]
    stop = threading.Event()
    results: dict[str, Any] = {}
    try:
        with ThreadPoolExecutor(STREAMS) as pool, httpx.Client(timeout=600) as client:
            futures = [pool.submit(run_stream, url, arrivals, stop) for arrivals in streams]
            while min(len(a) for a in streams) < 20:  # every stream is decoding
                time.sleep(0.05)
            for name, body in (("prompt_100k_chars", big_prompt()), ("schema_60_properties", big_schema())):
                gaps, statuses = [], []
                for _ in range(args.repeats):
                    time.sleep(1.0)
                    start = time.perf_counter()
                    statuses.append(client.post(f"{url}/v1/chat/completions", json=body).status_code)
                    end = time.perf_counter()
                    time.sleep(0.5)  # the gap that ends after the response still counts
                    gaps.append(worst_gap(streams, start, end))
                results[name] = {"statuses": statuses, "worst_gap_s": max(gaps), "gaps_s": gaps}
            stop.set()
            for f in futures:
                f.result()
    finally:
        stop_server(srv)
    all_gaps = [b - a for s in streams for a, b in itertools.pairwise(s)]
    step = median(all_gaps)
    for entry in results.values():
        entry["worst_gap_in_decode_steps"] = entry["worst_gap_s"] / step
    report = {
        "machine": machine_info(),
        "python": args.python,
        "streams": STREAMS,
        "decode_step_s": {"p50": step, "p95": percentile(all_gaps, 95), "p99": percentile(all_gaps, 99)},
        "requests": results,
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
