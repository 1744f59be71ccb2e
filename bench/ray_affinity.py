"""Prefix-affine routing on Ray Serve against power-of-two choices, in one run.

Workload: N conversations (default 16) over 2 engine replicas of the embedded model, each with an
opening of its own (no shared system prompt), taking turns round-robin for T turns (default 4),
``--concurrency`` requests in flight (default 2). Every answer is 12 tokens at temperature 0. The same
workload runs once with ``--routing prefix`` and once with ``--routing pow2`` (the application is
redeployed in between, so both start with cold replicas). For every turn from the second on it counts
how often the reply's ``usage.prompt_tokens_details.cached_tokens`` is > 0, and how often it covers
at least the previous turn's whole prompt (the conversation's history was found where it went).
Prints one JSON object.

Usage::

    python bench/ray_affinity.py [--conversations 16] [--turns 4] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def opening(index: int) -> str:
    """A first message of its own for conversation ``index`` (about 60 tokens)."""
    topics = ["rivers", "bridges", "violins", "glaciers", "lighthouses", "orchards", "comets", "markets"]
    topic = topics[index % len(topics)]
    return (
        f"Conversation {index}: I am writing notes about {topic} number {index * 7919 % 1000}. "
        f"Please keep every answer short. First, list three facts about {topic} that a child "
        f"would find surprising, and say which of them you find the most surprising and why."
    )


def turn(client: httpx.Client, url: str, history: list[dict[str, str]]) -> dict[str, Any]:
    r = client.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": history, "max_tokens": 12, "temperature": 0},
        timeout=300,
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def run_workload(url: str, conversations: int, turns: int, concurrency: int) -> dict[str, Any]:
    """Round-robin turns; per turn >= 2: cached_tokens > 0, and cached >= the previous prompt."""
    histories: list[list[dict[str, str]]] = [
        [{"role": "user", "content": opening(i)}] for i in range(conversations)
    ]
    previous_prompt = [0] * conversations
    later = warm = whole = 0
    started = time.perf_counter()
    with httpx.Client() as client, ThreadPoolExecutor(concurrency) as pool:
        for t in range(turns):
            replies = list(pool.map(lambda h: turn(client, url, h), histories))
            for i, reply in enumerate(replies):
                usage = reply["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                if t >= 1:
                    later += 1
                    warm += cached > 0
                    whole += cached >= previous_prompt[i]
                previous_prompt[i] = usage["prompt_tokens"]
                histories[i].append(
                    {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}
                )
                histories[i].append({"role": "user", "content": f"Thanks. Now tell me more, part {t + 2}."})
    return {
        "turns_after_first": later,
        "cached_gt_0": round(warm / later, 3) if later else None,
        "cached_whole_history": round(whole / later, 3) if later else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray import serve

    from interference.ray.app import Scaling, build_app
    from interference.settings import Settings

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(threads=1, parallel=2, keys_file=None, usage_db=None)
        for routing in ("prefix", "pow2"):
            serve.run(
                build_app(settings, Scaling(replicas=2), routing=routing), name="bench", route_prefix="/"
            )
            results[routing] = run_workload(url, args.conversations, args.turns, args.concurrency)
            serve.delete("bench")
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Ray's shutdown notices: stdout is the JSON
            serve.shutdown()
            ray.shutdown()
    prefix, pow2 = results["prefix"], results["pow2"]
    print(
        json.dumps(
            {
                "benchmark": "ray_affinity",
                "replicas": 2,
                "conversations": args.conversations,
                "turns": args.turns,
                "concurrency": args.concurrency,
                "prefix": prefix,
                "pow2": pow2,
                "cached_gt_0_ratio_vs_pow2": (
                    round(prefix["cached_gt_0"] / pow2["cached_gt_0"], 2) if pow2["cached_gt_0"] else None
                ),
                "goal_cached_gt_0": 0.9,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
