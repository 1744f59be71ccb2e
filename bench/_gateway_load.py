"""The pieces of bench/gateway.py that sit on the load side: the upstream stub and the load generator.

Both speak raw HTTP/1.1 on asyncio (uvloop), so that neither an HTTP library nor a web framework on
this side of the measurement is what gets measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import orjson

FIRST_TOKEN = b"Alpha"
TOKENS = ["Alpha", " beta", " gamma", " delta", " epsilon", " zeta", " eta", " theta"]


def log(msg: str) -> None:
    print(f"[gateway-bench] {msg}", file=sys.stderr, flush=True)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def cpu_busy(interval: float = 2.0) -> float:
    """Fraction of the whole machine's CPU time that was busy over ``interval`` seconds."""
    total0, idle0 = _cpu_times()
    time.sleep(interval)
    total1, idle1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    ticks, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(parents.get(current, []))
        with contextlib.suppress(OSError):
            fields = (Path("/proc") / str(current) / "stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Wait up to ``max_wait`` seconds for other work on the machine to stop; returns the busy fraction."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        log(f"the machine is {busy:.0%} busy; waiting for it to go quiet")
        time.sleep(10)
        busy = cpu_busy()
    if busy > threshold:
        log(f"warning: measuring on a machine that is {busy:.0%} busy with other work")
    return busy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    pos = (len(clean) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(clean) - 1)
    return clean[lo] + (clean[hi] - clean[lo]) * (pos - lo)


def rounded(obj: Any, ndigits: int = 3) -> Any:
    if isinstance(obj, float):
        return None if obj != obj else round(obj, ndigits)
    if isinstance(obj, dict):
        return {k: rounded(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, ndigits) for v in obj]
    return obj


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("interference", "httpx", "uvicorn", "uvloop", "httptools", "orjson", "fastapi"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(), **versions}


# ---------------------------------------------------------------------- processes


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def spawn(
    name: str, cmd: list[str], *, cpu: int | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_file = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    log(f"starting {name}: {' '.join(cmd)} (log: {log_file})")
    with log_file.open("wb") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, preexec_fn=_pin(cpu),
            start_new_session=True,
        )  # fmt: skip


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------- the stub upstream


def stub_responses() -> tuple[bytes, bytes]:
    completion = {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 1700000000, "model": "stub-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(TOKENS)},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": len(TOKENS), "total_tokens": 9 + len(TOKENS)},
    }  # fmt: skip
    events = []
    base = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "stub-model",
    }
    deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": t}, None) for t in TOKENS] + [({}, "stop")]
    for delta, finish in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")

    def response(body: bytes, content_type: bytes) -> bytes:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (
            content_type,
            len(body),
        )
        return head + body

    return (
        response(orjson.dumps(completion), b"application/json"),
        response(b"".join(events), b"text/event-stream"),
    )


class _StubProtocol(asyncio.Protocol):
    def __init__(self, whole: bytes, stream: bytes) -> None:
        self._whole, self._stream = whole, stream
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            is_stream = b'"stream":true' in body.replace(b" ", b"")
            assert self._transport is not None
            self._transport.write(self._stream if is_stream else self._whole)


def run_stub(port: int) -> None:
    import uvloop

    async def serve() -> None:
        whole, stream = stub_responses()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _StubProtocol(whole, stream), "127.0.0.1", port, backlog=2048
        )
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


# ---------------------------------------------------------------------- the load generator


def raw_request(port: int, model: str, *, stream: bool, key: str) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    data = orjson.dumps(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def _read_response(reader: asyncio.StreamReader, t0: float) -> tuple[int, float]:
    """Read one response; returns its status and the time to the first token (NaN if none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    first = float("nan")
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            if first != first and FIRST_TOKEN in data:
                first = time.perf_counter() - t0
    else:
        at = lower.find(b"content-length:")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
        data = await reader.readexactly(length)
        if FIRST_TOKEN in data:
            first = time.perf_counter() - t0
    return status, first


async def run_load(port: int, request: bytes, *, connections: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                try:
                    status, first = await _read_response(reader, t0)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                if status != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                ttfts.append(first)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    ttft_ms = [x * 1000 for x in ttfts]
    return {
        "connections": connections,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "ttft_p50_ms": percentile(ttft_ms, 50),
        "ttft_p99_ms": percentile(ttft_ms, 99),
    }
