"""What turning llama.cpp's weight repacking off costs (``--no-repack``, the default on AMX CPUs).

For a Q4_0 and a Q4_1 GGUF (the Q4_0 one is requantized once from the embedded Q4_1 model and
cached), two interference servers run side by side, one with ``--repack`` and one with
``--no-repack``, and identical greedy streams alternate between them. Prints one JSON object with
decode tok/s, prefill time and the ratio no-repack / repack for each file.

On a CPU with AMX, ``--repack`` crashes at the first decode (llama.cpp #20824): there only the
``--no-repack`` figures can be taken, and the script says so.

Usage::

    python bench/repack.py [--rounds 6] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from interference.engine.cpu import read_cpu_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LONG_PROMPT,
    embedded_gguf,
    exit_on_sigterm,
    free_port,
    median,
    ratio,
    rounded,
    start_server,
    stop_server,
    stream_chat,
)
from _system import machine_info

CACHE = Path.home() / ".cache" / "interference" / "bench"
MODEL = "gpt-4o"
LONG_INPUT = " ".join([LONG_PROMPT] * 12)  # about 400 prompt tokens: prefill time dominates TTFT


def q4_0_copy(source: Path) -> Path:
    """The embedded model requantized to Q4_0 (once; cached)."""
    import llama_cpp.llama_cpp as C

    target = CACHE / source.name.replace("Q4_1", "Q4_0")
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    params = C.llama_model_quantize_default_params()
    params.ftype = C.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    tmp = target.with_suffix(".tmp")
    rc = C.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    tmp.rename(target)
    return target


def serve(gguf: Path, flag: str, threads: int) -> Any:
    port = free_port()
    cmd = [sys.executable, "-m", "interference", "serve", "--port", str(port), "-m", str(gguf), flag]
    cmd += ["--threads", str(threads), "--parallel", "1", "--no-embeddings", "--no-access-log"]
    return start_server(f"{gguf.stem} {flag}", cmd, port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    exit_on_sigterm()
    amx = read_cpu_info().has_amx
    q4_1 = embedded_gguf()
    files = {"Q4_0": q4_0_copy(q4_1), "Q4_1": q4_1}
    flags = ["--no-repack"] if amx else ["--repack", "--no-repack"]
    report: dict[str, Any] = {"machine": machine_info(), "amx": amx, "threads": args.threads, "models": {}}
    short = [{"role": "user", "content": LONG_PROMPT}]
    with httpx.Client() as client:
        for label, gguf in files.items():
            servers = {flag: serve(gguf, flag, args.threads) for flag in flags}
            decode: dict[str, list[float]] = {flag: [] for flag in flags}
            prefill: dict[str, list[float]] = {flag: [] for flag in flags}
            try:
                for srv in servers.values():  # warm-up
                    stream_chat(client, f"http://127.0.0.1:{srv.port}", short, 8, model=MODEL)
                for _ in range(args.rounds):
                    for flag, srv in servers.items():
                        url = f"http://127.0.0.1:{srv.port}"
                        decode[flag].append(
                            stream_chat(client, url, short, args.max_tokens, model=MODEL).decode_tps
                        )
                        # A fresh prompt each time (no prefix reuse): the number in front changes it.
                        unique = [{"role": "user", "content": f"{len(prefill[flag])} {LONG_INPUT}"}]
                        prefill[flag].append(stream_chat(client, url, unique, 1, model=MODEL).ttft)
            finally:
                for srv in servers.values():
                    stop_server(srv)
            entry: dict[str, Any] = {
                flag: {"decode_tok_s": median(decode[flag]), "prefill_s": median(prefill[flag])}
                for flag in flags
            }
            if not amx:
                entry["no_repack_over_repack"] = {
                    "decode_tok_s": ratio(median(decode["--no-repack"]), median(decode["--repack"])),
                    "prefill_s": ratio(median(prefill["--no-repack"]), median(prefill["--repack"])),
                }
            report["models"][label] = entry
    if amx:
        report["note"] = "AMX CPU: --repack crashes here (llama.cpp #20824); only --no-repack was measured"
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
