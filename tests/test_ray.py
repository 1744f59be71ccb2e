"""interference as a Ray Serve application on a two-node Ray cluster made on this machine.

The cluster has one CPU per node and each engine replica reserves one, so the two replicas sit on
different nodes. The tests talk to the Ray Serve HTTP proxy with the same clients as the one-process
server's tests.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from test_keys import add_key, fresh_window
from test_keys_redis import redis_url  # noqa: F401  (a fixture)
from test_seed_client import SCRIPT, _legacy_python, _port_1337_taken

from conftest import free_port

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from interference.keys.ledger import summarize  # noqa: E402
from interference.ray.app import Scaling, build_app  # noqa: E402
from interference.settings import Settings  # noqa: E402

APP = "interference"
ENGINE = "Engine"


class RayServer:
    """The cluster's Ray Serve proxy, and which configuration of the application it serves now."""

    def __init__(self, port: int, tmp: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.tmp = tmp
        self.deployed: str | None = None

    def deploy(self, name: str, app: Any) -> None:
        """Serve ``app`` as the application at / (replacing another configuration) unless it is there."""
        if self.deployed != name:
            if self.deployed is not None:
                serve.delete(APP)
            self.deployed = None
            serve.run(app, name=APP, route_prefix="/")
            self.deployed = name


def _replicas(state: str = "RUNNING", deployment: str = ENGINE) -> int:
    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get(state, 0))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


# Autoscaling figures reach the controller every second instead of every 10 (read when Ray starts).
_FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServer]:
    """Two nodes of one CPU each, Ray Serve's proxy on 1337 (or a free port); no application yet."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in _FAST_METRICS.items():
            env.setenv(name, value)
        cluster = cluster_utils.Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
    port = 1337 if not _port_1337_taken() else free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RayServer(port, tmp_path_factory.mktemp("ray"))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture()
def ray_server(ray_cluster: RayServer) -> RayServer:
    """Two engine replicas of the embedded model, one per node, routed by prompt prefix."""
    settings = Settings(threads=1, parallel=2, keys_file=None, usage_db=str(ray_cluster.tmp / "usage.db"))
    ray_cluster.deploy("two-replicas", build_app(settings, Scaling(replicas=2)))
    return ray_cluster


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


def test_requests_on_a_lost_replica_go_to_another(ray_server: RayServer) -> None:
    """A replica killed as requests arrive: those it had not answered are served by the other one."""
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#{ENGINE}")
    ]
    assert len(names) == 2
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=False)
    with ThreadPoolExecutor(8) as pool:  # eight conversations: some are the lost replica's by hash
        replies = list(
            pool.map(
                lambda i: _chat(ray_server.url, [{"role": "user", "content": f"question {i}"}]), range(8)
            )
        )
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
    assert _wait(lambda: _replicas() == 2, 120), serve.status()


def _chat(url: str, messages: list[dict[str, str]], *, key: str = "sk-local") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": messages, "max_tokens": 6, "temperature": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def test_turns_of_a_conversation_stay_on_the_replica_that_holds_it(ray_server: RayServer) -> None:
    """4 conversations x 3 turns, interleaved: every later turn finds its whole history cached.

    Each conversation opens differently; the template's common head would be cached anywhere, so a
    turn counts only when its cached tokens cover the previous turn's whole prompt: the replica it
    went to is the one that served that turn. Power-of-two choices would miss about half."""
    histories = [
        [{"role": "user", "content": f"Conversation {i} about {topic}: name three facts about {topic}."}]
        for i, topic in enumerate(["rivers", "violins", "comets", "orchards"])
    ]
    previous = [0] * len(histories)
    for turn in range(3):
        for i, history in enumerate(histories):
            r = _chat(ray_server.url, history)
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            if turn > 0:
                assert usage["prompt_tokens_details"]["cached_tokens"] >= previous[i], (turn, i, usage)
            previous[i] = usage["prompt_tokens"]
            history.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
            history.append({"role": "user", "content": f"And then? ({turn})"})


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_two_ingress_replicas_share_limits_and_one_ledger(
    ray_cluster: RayServer,
    redis_url: str,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """A key of 4 requests a minute gets exactly 4 answers through two ingress replicas, and the one
    ledger holds every request with the usage its client was told."""
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "shared", "--rpm", "4")
    usage_db = tmp_path / "usage.db"
    settings = Settings(
        threads=1,
        parallel=2,
        keys_file=str(keys_file),
        limits_backend=redis_url,
        usage_db=str(usage_db),
        embeddings=False,
    )
    # Engine replicas reserve no CPU here: the cluster's two are the other configuration's to keep.
    ray_cluster.deploy(
        "two-ingresses", build_app(settings, Scaling(replicas=1, ingress_replicas=2), engine_num_cpus=0)
    )
    assert _replicas(deployment="Ingress") == 2
    fresh_window()
    replies = [_chat(ray_cluster.url, [{"role": "user", "content": f"hi {i}"}], key=key) for i in range(10)]
    assert sorted(r.status_code for r in replies) == [200] * 4 + [429] * 6, [r.text for r in replies]
    told = [r.json()["usage"] for r in replies if r.status_code == 200]

    def totals() -> dict[str, Any] | None:
        rows = summarize(usage_db, group_by="key") if usage_db.exists() else []
        return rows[0] if rows and rows[0]["requests"] == 10 else None

    assert _wait(lambda: totals() is not None, 30), summarize(usage_db) if usage_db.exists() else None
    row = totals()
    assert row is not None and row["key"] == "shared" and row["errors"] == 6
    assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in told)
    assert row["completion_tokens"] == sum(u["completion_tokens"] for u in told)


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(ray_cluster: RayServer) -> None:
    settings = Settings(threads=1, parallel=2, keys_file=None, usage_db=str(ray_cluster.tmp / "usage.db"))
    scaling = Scaling(
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=1,
        downscale_delay_s=2,
        look_back_period_s=12,  # above the deprecated metrics_interval_s (10), or Ray warns
    )
    ray_cluster.deploy("autoscaling", build_app(settings, scaling, engine_num_cpus=0))
    assert _replicas() == 1
    stop = threading.Event()

    def load() -> None:
        body = [{"role": "user", "content": "write a long story about the sea"}]
        while not stop.is_set():
            r = httpx.post(
                f"{ray_cluster.url}/v1/chat/completions",
                json={"model": "gpt-4o", "messages": body, "max_tokens": 48},
                timeout=120,
            )
            assert r.status_code == 200, r.text

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(load) for _ in range(4)]
        try:
            assert _wait(lambda: _replicas() == 2, 90), serve.status()
        finally:
            stop.set()
        for each in running:
            each.result()
    assert _wait(lambda: _replicas() == 1 and _replicas("STOPPING") == 0, 90), serve.status()
