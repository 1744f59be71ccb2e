"""Where one engine step's time goes, at 1, 8 and 16 concurrent streams (the engine in-process).

Runs the embedded model's engine directly (no HTTP), switches on ``Scheduler.profile`` and decodes
``--tokens`` tokens on each of c streams (temperature 0.8 with the server's default top-k and min-p,
so the sampler chain does real work; ``--temperature 0`` samples greedily). Prints
one JSON object: per concurrency, milliseconds per step for admission, batch assembly, the hand-off to
the event loop, llama_decode, sampling and what follows it (detokenizing, stop strings, outputs), the
Python share of a step, and microseconds of sampling per token.

Usage::

    python bench/step_profile.py [--levels 1,8,16] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_gguf, rounded
from _system import machine_info

from interference.engine._llama import quiet_llama_logs
from interference.engine.engine import Engine, EngineConfig
from interference.engine.profile import StepProfile
from interference.engine.types import EngineRequest, SamplingParams
from interference.providers.local import DEFAULT_MIN_P, DEFAULT_TOP_K


async def run_level(engine: Engine, level: int, tokens: int, temperature: float) -> dict[str, Any]:
    prof = StepProfile()

    async def one(i: int, seed: int) -> int:
        prompt = engine.render_chat([{"role": "user", "content": f"Story {level}-{i}: tell me a long tale."}])
        request = EngineRequest(
            request_id=f"p{level}-{i}",
            prompt=tuple(prompt),
            # The server's defaults for a request that names only a temperature and top_p.
            sampling=SamplingParams(
                temperature=temperature, top_p=0.95, top_k=DEFAULT_TOP_K, min_p=DEFAULT_MIN_P, seed=seed
            ),
            max_tokens=tokens,
        )
        n = 0
        async for out in engine.submit(request):
            n = out.completion_tokens or n
        return n

    # The same prompts twice: the second round finds them in the slots, so its figures describe
    # decoding steps.
    await asyncio.gather(*(one(i, i) for i in range(level)))
    engine.scheduler.profile = prof
    started, loop_cpu = time.perf_counter(), time.thread_time()
    done = await asyncio.gather(*(one(i, 100 + i) for i in range(level)))
    wall, loop_cpu = time.perf_counter() - started, time.thread_time() - loop_cpu
    engine.scheduler.profile = None
    return {
        "streams": level,
        "tokens": sum(done),
        "tok_s": sum(done) / wall,
        "steps": prof.steps,
        **prof.split(),
        # The event loop's thread, here only taking outputs: the floor of the serving side's work.
        "loop_cpu_ms_per_token": 1e3 * loop_cpu / max(1, sum(done)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,8,16")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.8, help="0 samples greedily (default 0.8)")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    quiet_llama_logs()
    engine = Engine(
        EngineConfig(path=embedded_gguf(), threads=args.threads, parallel=max(levels), cache_ram=0)
    )
    engine.start()
    try:
        # The server's own event loop (uvicorn runs on uvloop): asyncio's wakes the loop from another
        # thread through a socket write that lets go of the GIL, which uvloop's does not.
        rows = [uvloop.run(run_level(engine, level, args.tokens, args.temperature)) for level in levels]
    finally:
        engine.close()
    report = {"benchmark": "step_profile", "machine": machine_info(), "threads": args.threads, "levels": rows}
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
