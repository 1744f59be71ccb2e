"""Test fixtures: the real server, started as a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from grammar_check import grammars  # noqa: F401 - a fixture, for the tests of grammars

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="sk-local", max_retries=0, **kwargs)  # type: ignore[arg-type]

    def http(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by metric name, summed over labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                name = sample.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + float(value)
        return out


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "interference", "serve", *args]


@contextmanager
def running_server(
    *args: str, port: int | None = None, env: dict[str, str] | None = None, tmp: Path | None = None
) -> Iterator[RunningServer]:
    """Start ``interference serve`` and wait until /ready answers (the start-up model is loaded); stop it
    afterwards. /health answers 200 earlier, while the model loads."""
    port = port or free_port()
    log_dir = tmp or Path(os.environ.get("TMPDIR", "/tmp"))
    log_path = log_dir / f"interference-{port}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("INTERFERENCE_THREADS", "2")
    # The usage ledger's default file lives in the data dir: keep test servers out of the real one.
    full_env.setdefault("XDG_DATA_HOME", str(log_dir / "data"))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            serve_command("--port", str(port), *args), stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    server = RunningServer(proc, port, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log}")
            try:
                if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{server.log}")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default server: embedded model, default settings."""
    with running_server(tmp=tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    return server.client()


@pytest.fixture()
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as c:
        yield c
