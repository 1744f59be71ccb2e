"""interference as a Ray Serve application on a two-node Ray cluster made on this machine.

The cluster has one CPU per node and each engine replica reserves one, so the two replicas sit on
different nodes. The tests talk to the Ray Serve HTTP proxy with the same clients as the one-process
server's tests.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from test_seed_client import SCRIPT, _legacy_python, _port_1337_taken

from conftest import free_port

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from interference.ray.app import Scaling, build_app  # noqa: E402
from interference.settings import Settings  # noqa: E402

APP = "interference"
ENGINE = "Engine"


class RayServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def _replicas(state: str = "RUNNING") -> int:
    status = serve.status().applications[APP].deployments[ENGINE]
    return int(status.replica_states.get(state, 0))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def ray_server() -> Iterator[RayServer]:
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    port = 1337 if not _port_1337_taken() else free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(threads=1, parallel=2, keys_file=None)
        serve.run(build_app(settings, Scaling(replicas=2)), name=APP, route_prefix="/")
        yield RayServer(port)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture()
def client(ray_server: RayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key="sk-local", max_retries=0, timeout=120)


def test_replicas_sit_on_both_nodes(ray_server: RayServer) -> None:
    assert _replicas() == 2
    # Each node has one CPU and each engine replica reserves one: both nodes hold a replica.
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray.available_resources().get("CPU", 0) == 0


def test_openai_sdk_chat(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens <= 8
    again = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert again.choices[0].message.content == done.choices[0].message.content


def test_openai_sdk_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6


def test_openai_sdk_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model="gpt-3.5-turbo", prompt="Once", max_tokens=5)
    assert done.choices[0].finish_reason in ("stop", "length")


def test_anthropic_sdk(ray_server: RayServer) -> None:
    claude = anthropic.Anthropic(base_url=ray_server.url, api_key="sk-local", max_retries=0)
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens <= 8
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=6, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_replica_errors_keep_their_type(ray_server: RayServer) -> None:
    """An error raised on an engine replica reaches the client as the same 4xx, in the route's envelope."""
    long = "word " * 6000
    r = httpx.post(
        f"{ray_server.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": long}], "max_tokens": 4},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(
        f"{ray_server.url}/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 4, "messages": [{"role": "user", "content": long}]},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"


def test_seed_client(ray_server: RayServer) -> None:
    if ray_server.port != 1337:
        pytest.skip("port 1337 is taken by another program; the seed client only talks to localhost:1337")
    python: Path = _legacy_python()
    done = subprocess.run([str(python), str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 20, done.stdout


def test_killed_replicas_cut_their_streams_and_come_back(ray_server: RayServer) -> None:
    """Streams on killed replicas end with one error event; new requests get a 200 or a 503, never a hang."""
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "write a long story"}],
        "max_tokens": 2000,
        "stream": True,
    }
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#{ENGINE}")
    ]
    assert len(names) == 2
    with httpx.stream("POST", f"{ray_server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"delta"' in first
        for name in names:  # whichever replica holds the stream
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)
        rest = [line for line in lines if line.startswith("data: ")]
    assert len([line for line in rest if '"error"' in line]) == 1, rest[-3:]
    assert rest[-1] == "data: [DONE]"
    # While no replica is up a request waits a bounded time, then gets a 503 with Retry-After.
    r = httpx.post(
        f"{ray_server.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"]["type"]
    assert _wait(lambda: _replicas() == 2, 120), serve.status()
    r = httpx.post(
        f"{ray_server.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert r.status_code == 200, r.text
