"""Limits shared through a real redis-server: two replicas, one key, one rpm."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_keys import add_key, fresh_window

from conftest import free_port, running_server

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
            != b"PONG"
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def test_two_replicas_share_one_rpm(redis_url: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "shared", "--rpm", "4")
    common = ("--keys-file", str(keys_file), "--limits-backend", redis_url, "--no-embeddings", "-np", "1")
    with (
        running_server(*common, "--usage-db", str(tmp_path / "a.db"), tmp=tmp_path) as a,
        running_server(*common, "--usage-db", str(tmp_path / "b.db"), tmp=tmp_path) as b,
    ):
        fresh_window()
        statuses = [_post(server.url, key).status_code for _ in range(4) for server in (a, b)]
        assert sorted(statuses) == [200] * 4 + [429] * 4
        assert statuses[:4] == [200] * 4  # admitted in order, whichever replica was asked


def test_two_replicas_share_one_max_concurrent(redis_url: str, tmp_path: Path) -> None:
    """A stream held open on one replica takes the key's only slot on the other too."""
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "single", "--max-concurrent", "1")
    common = ("--keys-file", str(keys_file), "--limits-backend", redis_url, "--no-embeddings", "-np", "2")
    with (
        running_server(*common, "--usage-db", str(tmp_path / "a.db"), tmp=tmp_path) as a,
        running_server(*common, "--usage-db", str(tmp_path / "b.db"), tmp=tmp_path) as b,
    ):
        headers = {"Authorization": f"Bearer {key}"}
        # End-of-text banned: the stream runs its 2000 tokens, long after the request on b.
        long = {**BODY, "max_tokens": 2000, "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}
        url = f"{a.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=long, headers=headers, timeout=120) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)  # the stream is under way: its lease is held
            refused = _post(b.url, key)
            assert refused.status_code == 429, refused.text
            assert "max_concurrent 1" in refused.json()["error"]["message"]
        deadline = time.monotonic() + 30
        while (status := _post(b.url, key).status_code) == 429:
            assert time.monotonic() < deadline, "the lease was never given back"
            time.sleep(0.2)
        assert status == 200


def test_unreachable_redis_fails_closed_for_limited_keys_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    limited = add_key(keys_file, "limited", "--rpm", "100")
    free = add_key(keys_file, "free")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    args = (
        "--keys-file",
        str(keys_file),
        "--limits-backend",
        nowhere,
        "--api-key",
        "sk-op",
        "--no-embeddings",
    )
    with running_server(*args, "--usage-db", str(tmp_path / "u.db"), tmp=tmp_path) as server:
        refused = _post(server.url, limited)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "limits_unavailable"
        assert _post(server.url, free).status_code == 200
        assert _post(server.url, "sk-op").status_code == 200


def test_unreachable_redis_fails_open_when_told(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    limited = add_key(keys_file, "limited", "--rpm", "100")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    args = (
        "--keys-file",
        str(keys_file),
        "--limits-backend",
        nowhere,
        "--limits-fail-open",
        "--no-embeddings",
    )
    with running_server(*args, "--usage-db", str(tmp_path / "u.db"), tmp=tmp_path) as server:
        assert _post(server.url, limited).status_code == 200
