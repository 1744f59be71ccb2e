"""Prefill time by kernel setting: flash attention, micro-batch size and KV type, on this CPU.

Loads the embedded model once per setting (in-process, no HTTP) and times a cold prefill of prompts of
about 300 and 2000 tokens (``--sizes``), the settings taking turns per size so load from other processes
hits them alike. Also checks that the greedy next token matches the default setting's. Prints JSON.

Usage::

    python bench/kernels.py [--sizes 300,2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_gguf, rounded
from _system import machine_info

from interference.engine._llama import LlamaRuntime, quiet_llama_logs

SETTINGS: dict[str, dict[str, Any]] = {
    "default(auto,ub512,f16)": {},
    "fa_off": {"flash_attn": False},
    "fa_on": {"flash_attn": True},
    "ubatch_128": {"n_ubatch": 128},
    "ubatch_256": {"n_ubatch": 256},
    "q8_0": {"cache_type": "q8_0"},
}


def prefill(rt: LlamaRuntime, tokens: list[int]) -> tuple[float, int]:
    """Seconds to prefill ``tokens`` into sequence 0 (in n_batch chunks), and the greedy next token."""
    rt.clear()
    started = time.perf_counter()
    for start in range(0, len(tokens), rt.n_batch):
        rt.batch_clear()
        chunk = tokens[start : start + rt.n_batch]
        for k, tok in enumerate(chunk):
            rt.batch_add(tok, start + k, 0, logits=start + k == len(tokens) - 1)
        if rt.decode() != 0:
            raise RuntimeError("decode failed")
    elapsed = time.perf_counter() - started
    return elapsed, int(np.argmax(rt.logits(rt.batch_size - 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="300,2000")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    quiet_llama_logs()
    runtimes = {
        name: LlamaRuntime(
            embedded_gguf(), n_ctx=8192, n_seq=1, n_batch=2048, n_threads=args.threads, repack=False, **extra
        )
        for name, extra in SETTINGS.items()
    }
    text = " ".join(f"word{i % 97} river{i % 13}" for i in range(4000))
    base = runtimes["default(auto,ub512,f16)"].tokenize(text, add_special=False)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for size in [int(x) for x in args.sizes.split(",")]:
            tokens = base[:size]
            seconds: dict[str, list[float]] = {name: [] for name in runtimes}
            nexts: dict[str, int] = {}
            for _ in range(2):
                for name, rt in runtimes.items():
                    elapsed, nxt = prefill(rt, tokens)
                    seconds[name].append(elapsed)
                    nexts[name] = nxt
            default = min(seconds["default(auto,ub512,f16)"])
            rows[str(size)] = {
                name: {
                    "seconds": min(v),
                    "tok_s": size / min(v),
                    "over_default": min(v) / default,
                    "same_next_token": nexts[name] == nexts["default(auto,ub512,f16)"],
                }
                for name, v in seconds.items()
            }
    finally:
        for rt in runtimes.values():
            rt.close()
    print(json.dumps(rounded({"benchmark": "kernels", "machine": machine_info(), "sizes": rows}), indent=2))


if __name__ == "__main__":
    main()
