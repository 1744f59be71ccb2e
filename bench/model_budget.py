"""Memory honesty under ``--memory-budget``: switching between three models that together exceed it.

Three GGUFs sit in a models dir: the embedded Q4_1 model, its Q8_0 and Q4_0 requantizations (made once
and cached). One server serves them with ``--lazy`` and a budget that holds two of them but not three.
The script measures the server's resident memory (VmRSS) with nothing loaded (the base overhead), then
sends one short chat request to each model in turn, 20 switches, reading the RSS after each; then it
unloads a model and reads the RSS again. Then the load phase: ``--clients`` threads send requests to the
three models at once (each client cycles through them) while a sampler reads the RSS from /proc every
20 ms; the prompt cache runs at its default size (one pool for all models, inside the budget). Prints one
JSON object: every RSS, the largest against the budget (and budget + base), evictions from /metrics,
what an unload gave back, and for the load phase the sampled peak and the requests refused.

Usage::

    python bench/model_budget.py [--switches 20] [--parallel 1] [--cache-ram 2048] [--clients 6]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_gguf, exit_on_sigterm, free_port, ratio, rounded, start_server, stop_server
from _system import machine_info, rss_mb

CACHE = Path(tempfile.gettempdir()) / "interference-bench-models"


def requantized(source: Path, kind: str) -> Path:
    """The embedded model requantized to ``kind`` (Q8_0 or Q4_0), once; cached."""
    import llama_cpp.llama_cpp as C

    target = CACHE / source.name.replace("Q4_1", kind)
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    params = C.llama_model_quantize_default_params()
    params.ftype = {"Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0}[kind]
    params.allow_requantize = True
    params.nthread = 2
    tmp = target.with_suffix(".tmp")
    if C.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize to {kind} failed")
    tmp.rename(target)
    return target


def chat(client: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    reply = client.post("/v1/chat/completions", json=body)
    reply.raise_for_status()


def cards(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in client.get("/v1/models").json()["data"]}


def metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rpartition(" ")[2])
    return total


def under_load(base_url: str, pid: int, names: list[str], clients: int, rounds: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``rounds`` requests across the models; RSS sampled meanwhile."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.02)

    def client_run(index: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=base_url, timeout=300) as client:
            for r in range(rounds):
                body = {
                    "model": names[(index + r) % len(names)],
                    "messages": [{"role": "user", "content": f"Client {index}, round {r}: say hi."}],
                    "max_tokens": 16,
                }
                codes.append(client.post("/v1/chat/completions", json=body).status_code)
        return codes

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            codes = [c for run in pool.map(client_run, range(clients)) for c in run]
    finally:
        done.set()
        sampler.join()
    return {
        "seconds": time.perf_counter() - started,
        "requests": len(codes),
        "answered": codes.count(200),
        "refused": len(codes) - codes.count(200),
        "rss_samples": len(samples),
        "max_rss_mib": max(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument(
        "--cache-ram",
        type=int,
        default=2048,
        help="MiB of the prompt cache all models share, inside the budget (default 2048)",
    )
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients in the load phase")
    parser.add_argument("--rounds", type=int, default=6, help="requests per client in the load phase")
    args = parser.parse_args()
    exit_on_sigterm()

    source = embedded_gguf()
    models_dir = Path(tempfile.mkdtemp(prefix="interference-budget-"))
    files = [source, requantized(source, "Q8_0"), requantized(source, "Q4_0")]
    names = []
    for f in files:
        shutil.copyfile(f, models_dir / f.name)
        names.append(f.name.removesuffix(".gguf"))

    # First a server without a budget, only to read the estimates it would use.
    port = free_port()
    common = [
        "--models-dir", str(models_dir), "--lazy", "--no-embeddings", "--parallel", str(args.parallel),
        "--cache-ram", str(args.cache_ram),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "interference", "serve", "--port", str(port), "--threads", "2", *common]
    probe = start_server("probe", cmd, port)
    with httpx.Client(base_url=probe.base_url, timeout=120) as client:
        estimates = {n: int(cards(client)[n]["memory_mb"]) for n in names}
    stop_server(probe)
    ordered = sorted(estimates.values())
    budget = ordered[1] + ordered[2]  # the two largest fit, all three do not
    assert budget < sum(ordered)

    port = free_port()
    cmd = [
        sys.executable, "-m", "interference", "serve", "--port", str(port), "--threads", "2", *common,
        "--memory-budget", str(budget),
    ]  # fmt: skip
    srv = start_server("budget", cmd, port)
    result: dict[str, Any] = {"machine": machine_info(), "budget_mib": budget, "estimates_mib": estimates}
    try:
        with httpx.Client(base_url=srv.base_url, timeout=300) as client:
            cards(client)
            time.sleep(1.0)
            base = rss_mb(srv.proc.pid)
            rss: list[float] = []
            sequence = [names[i % len(names)] for i in range(args.switches)]
            for name in sequence:
                chat(client, name)
                rss.append(rss_mb(srv.proc.pid))
            loaded = [n for n, c in cards(client).items() if n in names and c["status"] == "loaded"]
            before_unload = rss_mb(srv.proc.pid)
            client.post(f"/v1/models/{loaded[0]}/unload").raise_for_status()
            after_unload = rss_mb(srv.proc.pid)
            load = under_load(srv.base_url, srv.proc.pid, names, args.clients, args.rounds)
            memory = client.get("/v1/models").json().get("memory", {})
            load["max_rss / budget"] = ratio(load["max_rss_mib"], budget)
            load["max_rss_within_budget"] = load["max_rss_mib"] <= budget
            result.update(
                {
                    "base_overhead_mib": base,
                    "switches": sequence,
                    "rss_mib_after_each_switch": rss,
                    "max_rss_mib": max(rss),
                    "limit_mib (budget + base)": budget + base,
                    "max_rss / limit": ratio(max(rss), budget + base),
                    "all_within_limit": all(r <= budget + base for r in rss),
                    "evictions": metric(client, "interference_model_evictions_total"),
                    "loads": metric(client, "interference_model_loads_total"),
                    "unloaded": loaded[0],
                    "rss_mib_before_unload": before_unload,
                    "rss_mib_after_unload": after_unload,
                    "unload_gave_back_mib": before_unload - after_unload,
                    "unload_gave_back / estimate": ratio(before_unload - after_unload, estimates[loaded[0]]),
                    "max_rss / budget": ratio(max(rss), budget),
                    "under_load": load,
                    "memory_after": memory,
                }
            )
    finally:
        stop_server(srv)
        shutil.rmtree(models_dir, ignore_errors=True)
    print(json.dumps(rounded(result, 3), indent=2))


if __name__ == "__main__":
    main()
