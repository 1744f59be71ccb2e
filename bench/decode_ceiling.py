"""Concurrent decode against its ceiling: the bare kernels, interference and llama-server in one run.

    .venv/bin/python bench/decode_ceiling.py [--streams 8] [--tokens 128] [--reps 4]

Both servers run the same llama.cpp kernels, so how far any server can get ahead of another while its
streams decode is bounded by what the kernels alone do. Three figures, the three taking turns in every
repetition, one at a time:

* ``kernels``: a Python loop around ``llama_decode`` in this process (the embedded GGUF, the same
  threads, one unified KV pool, greedy argmax per row): ``--streams`` sequences prefilled together,
  then ``--tokens`` - 1 decode steps of one token each. No HTTP, no scheduler, no sampler.
* ``interference`` and ``llama-server`` (``--kv-unified``, the same slots and threads): ``--streams``
  streamed chat requests at once, as ``bench/scheduler.py``'s steady workload sends them.

Per server, ``decode_tok_s`` sums each stream's tokens after its first over the time from its first to
its last token: the decode phase alone, comparable with ``kernels``. ``aggregate_tok_s`` is all tokens
over the wall time, prefill included (``bench/scheduler.py``'s figure). Prints one JSON object with the
medians and the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from interference.engine._llama import LlamaRuntime, quiet_llama_logs
from interference.engine.cpu import choose_repack, read_cpu_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from _system import machine_info
from scheduler import chat, concurrent, stream, words
from single_stream import interference_cmd, llama_server_binary, llama_server_cmd


def prompts(streams: int, rep: int) -> list[list[dict[str, str]]]:
    return [
        chat("You are a writer.", f"Essay {rep}-{i}: write about " + words(20, i)) for i in range(streams)
    ]


def kernels(rt: LlamaRuntime, streams: int, tokens: int, rep: int) -> float:
    """Decode tok/s of ``streams`` sequences in one batch a step, with nothing around the kernels."""
    rt.clear()
    texts = [" ".join(m["content"] for m in messages) for messages in prompts(streams, rep)]
    ids = [rt.tokenize(text, add_special=True) for text in texts]
    rt.batch_clear()
    rows = []
    for seq, prompt in enumerate(ids):
        for pos, token in enumerate(prompt):
            row = rt.batch_add(token, pos, seq, logits=pos == len(prompt) - 1)
        rows.append(row)
    if rt.decode() != 0:
        raise RuntimeError("prefill failed")
    nexts = [int(np.argmax(rt.logits(row))) for row in rows]
    positions = [len(prompt) for prompt in ids]
    started = time.perf_counter()
    for _ in range(tokens - 1):
        rt.batch_clear()
        rows = [rt.batch_add(nexts[s], positions[s], s, logits=True) for s in range(streams)]
        if rt.decode() != 0:
            raise RuntimeError("decode failed")
        nexts = [int(np.argmax(rt.logits(row))) for row in rows]
        positions = [p + 1 for p in positions]
    return streams * (tokens - 1) / (time.perf_counter() - started)


def served(client: httpx.Client, srv: Any, streams: int, tokens: int, rep: int) -> tuple[float, float]:
    """(decode tok/s, aggregate tok/s) of ``streams`` concurrent streams."""
    jobs = [functools.partial(stream, client, srv, m, tokens) for m in prompts(streams, rep)]
    results, wall = concurrent(jobs)
    if any(r.error for r in results):
        raise RuntimeError(f"{srv.name}: {next(r.error for r in results if r.error)}")
    decode = sum(len(r.gaps) / r.span for r in results if r.span > 0)
    return decode, sum(r.tokens for r in results) / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama-server", default=None, help="path to llama-server (default: the cached build)")
    args = p.parse_args()
    common.exit_on_sigterm()
    quiet_llama_logs()
    gguf = common.embedded_gguf()
    t, n = str(args.threads), str(args.streams)
    repack = choose_repack(None, read_cpu_info()).enabled
    rt = LlamaRuntime(
        gguf,
        n_ctx=2048 * args.streams,
        n_seq=args.streams,
        n_batch=2048,
        n_threads=args.threads,
        repack=repack,
    )
    theirs = ["-t", t, "-tb", t, "-c", str(2048 * args.streams), "-np", n, "--kv-unified"]
    binary = llama_server_binary(args.llama_server)
    servers = [
        common.start_server(
            "llama-server", llama_server_cmd(binary, gguf, (q := common.free_port()), theirs), q
        ),
        common.start_server(
            "interference",
            interference_cmd(
                None, (port := common.free_port()), ["--parallel", n, "--threads", t, "--no-embeddings"]
            ),
            port,
        ),
    ]
    decode: dict[str, list[float]] = {"kernels": [], "llama-server": [], "interference": []}
    aggregate: dict[str, list[float]] = {"llama-server": [], "interference": []}
    try:
        with httpx.Client(timeout=900.0) as client:
            for srv in servers:
                stream(client, srv, chat("Warm up.", "Hi"), 4)
            kernels(rt, args.streams, 8, -1)
            for rep in range(args.reps):
                decode["kernels"].append(kernels(rt, args.streams, args.tokens, rep))
                for srv in servers:
                    d, a = served(client, srv, args.streams, args.tokens, rep)
                    decode[srv.name].append(d)
                    aggregate[srv.name].append(a)
                print(f"repetition {rep + 1}/{args.reps}: " + ", ".join(
                    f"{k} {v[-1]:.1f}" for k, v in decode.items()), file=sys.stderr)  # fmt: skip
    finally:
        for srv in servers:
            common.stop_server(srv)
        rt.close()
    med = {k: common.median(v) for k, v in decode.items()}
    report = {
        "benchmark": "decode_ceiling",
        "machine": machine_info(),
        "streams": args.streams,
        "tokens": args.tokens,
        "threads": args.threads,
        "repetitions": args.reps,
        "decode_tok_s": {k: {"median": m, "runs": decode[k]} for k, m in med.items()},
        "aggregate_tok_s": {k: {"median": common.median(v), "runs": v} for k, v in aggregate.items()},
        "ratio": {
            "kernels_over_llama_server": common.ratio(med["kernels"], med["llama-server"]),
            "interference_over_kernels": common.ratio(med["interference"], med["kernels"]),
            "interference_over_llama_server_decode": common.ratio(med["interference"], med["llama-server"]),
            "interference_over_llama_server_aggregate": common.ratio(
                common.median(aggregate["interference"]), common.median(aggregate["llama-server"])
            ),
        },
    }
    print(json.dumps(common.rounded(report), indent=2))


if __name__ == "__main__":
    main()
