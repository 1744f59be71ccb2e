"""Fair turns: B's time to first token while key A has a burst waiting, against B alone.

One server with one slot per ``--parallel`` and two named keys. Three runs, in the same process:
``quiet`` (B alone), ``fair`` (A's burst queued, then B with its own key: B waits for one slot), and
``fifo`` (the same, but B sends A's key, so it queues behind the burst as every request did before fair
turns). Prints one JSON object with the medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exit_on_sigterm, free_port, median, ratio, rounded, start_server, stop_server, stream_chat

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _add_key(keys_file: Path, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "interference", "keys", "add", name, "--keys-file", str(keys_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _waiting(base_url: str) -> float:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("interference_engine_requests_waiting")
    )


def _ttft(base_url: str, key: str, max_tokens: int) -> float:
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
        result = stream_chat(client, base_url, PROMPT, max_tokens, model="gpt-4o-mini")
    if result.status != 200 or result.error:
        raise RuntimeError(f"request failed: {result.status} {result.error}")
    return float(result.ttft)


def _with_burst(base_url: str, burst_key: str, b_key: str, burst: int, max_tokens: int) -> float:
    with ThreadPoolExecutor(burst) as pool:
        futures = [pool.submit(_ttft, base_url, burst_key, max_tokens) for _ in range(burst)]
        deadline = time.monotonic() + 120
        while _waiting(base_url) < burst // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        ttft = _ttft(base_url, b_key, 8)
        for f in futures:
            f.result()
    return ttft


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--burst", type=int, default=12, help="A's requests (default: 12)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request of A's burst")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    keys_file = tmp / "keys.toml"
    a, b = _add_key(keys_file, "a"), _add_key(keys_file, "b")
    port = free_port()
    cmd = [
        sys.executable, "-m", "interference", "serve", "--port", str(port), "--keys-file", str(keys_file),
        "--usage-db", str(tmp / "usage.db"), "--parallel", str(args.parallel), "--no-embeddings",
        "--max-queue", str(args.burst + 4), "--no-access-log",
    ]  # fmt: skip
    server = start_server("fairness", cmd, port)
    try:
        base = server.base_url
        _ttft(base, b, 8)  # warm-up
        quiet = [_ttft(base, b, 8) for _ in range(args.repeat)]
        fair = [_with_burst(base, a, b, args.burst, args.max_tokens) for _ in range(args.repeat)]
        fifo = [_with_burst(base, a, a, args.burst, args.max_tokens) for _ in range(args.repeat)]
    finally:
        stop_server(server)
    out = {
        "parallel": args.parallel,
        "burst": args.burst,
        "burst_max_tokens": args.max_tokens,
        "b_ttft_s": {"quiet": median(quiet), "fair": median(fair), "fifo": median(fifo)},
        "samples_s": {"quiet": quiet, "fair": fair, "fifo": fifo},
        "fair_over_quiet": ratio(median(fair), median(quiet)),
        "fifo_over_fair": ratio(median(fifo), median(fair)),
    }
    print(json.dumps(rounded(out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
