"""Named keys: the keys file, limits and their headers, admin routes, and the usage ledger."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from conftest import RunningServer, running_server

OPERATOR = "sk-operator"


def add_key(keys_file: Path, name: str, *flags: str) -> str:
    """``interference keys add``: the key is the only line on stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "interference", "keys", "add", name, "--keys-file", str(keys_file), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-itf-")
    return lines[0]


def fresh_window() -> None:
    """Limits count per clock minute: start a counting test early in one, so it stays in it."""
    if time.time() % 60 > 35:
        time.sleep(61 - time.time() % 60)


@dataclass
class Keyed:
    server: RunningServer
    keys_file: Path
    usage_db: Path
    keys: dict[str, str]

    def openai(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.keys[name], max_retries=0)

    def post(self, name: str, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.keys[name]}"},
            timeout=120,
        )


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("keys")
    keys_file = tmp / "keys.toml"
    usage_db = tmp / "usage.db"
    keys = {
        "plain": add_key(keys_file, "plain"),
        "ledger": add_key(keys_file, "ledger", "--rpm", "100", "--tpm", "100000"),
        "rpm": add_key(keys_file, "rpm", "--rpm", "3"),
        "tpm": add_key(keys_file, "tpm", "--tpm", "600"),
        "one": add_key(keys_file, "one", "--max-concurrent", "1"),
        "narrow": add_key(keys_file, "narrow", "--models", "gpt-4o-mini"),
        "boss": add_key(keys_file, "boss", "--admin", "--rpm", "1000", "--tpm", "1000000"),
    }
    args = (
        "--keys-file",
        str(keys_file),
        "--usage-db",
        str(usage_db),
        "--api-key",
        OPERATOR,
        "--no-embeddings",
    )
    with running_server(*args, tmp=tmp) as server:
        yield Keyed(server, keys_file, usage_db, keys)


def test_the_keys_file_holds_hashes_only(keyed: Keyed) -> None:
    text = keyed.keys_file.read_text()
    assert text.count("[[keys]]") >= 6
    for key in keyed.keys.values():
        assert key not in text
    assert all(key not in keyed.server.log for key in keyed.keys.values())


def test_unknown_and_missing_keys_get_401(keyed: Keyed) -> None:
    bad = openai.OpenAI(base_url=f"{keyed.server.url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{keyed.server.url}/v1/models").status_code == 401


def test_operator_keys_have_no_limits_and_no_headers(keyed: Keyed) -> None:
    client = openai.OpenAI(base_url=f"{keyed.server.url}/v1", api_key=OPERATOR, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert raw.http_response.status_code == 200
    assert "x-ratelimit-limit-requests" not in raw.headers


def test_limited_keys_get_openai_headers(keyed: Keyed) -> None:
    raw = keyed.openai("boss").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert int(h["x-ratelimit-remaining-requests"]) < 1000
    assert h["x-ratelimit-limit-tokens"] == "1000000"
    assert int(h["x-ratelimit-remaining-tokens"]) < 1000000
    for kind in ("requests", "tokens"):
        reset = h[f"x-ratelimit-reset-{kind}"]
        assert reset.endswith("s") and 1 <= int(reset[:-1]) <= 60


def test_a_model_outside_the_list_is_403_and_does_not_count(keyed: Keyed) -> None:
    client = keyed.openai("narrow")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert info.value.code == "model_not_allowed"
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_rpm_admits_exactly_the_limit_and_refusals_do_not_count(keyed: Keyed) -> None:
    fresh_window()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # Refused before admission: a model outside nothing (all allowed) is fine, so use a bad key path.
    assert keyed.post("rpm", "/v1/models/x/load", body).status_code == 403  # admin route
    statuses = [keyed.post("rpm", "/v1/chat/completions", body) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    refused = statuses[3]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "requests"  # OpenAI's type for a requests-per-minute limit
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert statuses[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # The same limit on every generating route: the Anthropic route answers in its own envelope.
    msg = httpx.post(
        f"{keyed.server.url}/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": keyed.keys["rpm"], "anthropic-version": "2023-06-01"},
        timeout=60,
    )
    assert msg.status_code == 429
    assert msg.json()["error"]["type"] == "rate_limit_error"
    assert msg.headers["Retry-After"].isdigit()


def test_tpm_reserves_max_tokens_and_settles(keyed: Keyed) -> None:
    fresh_window()
    client = keyed.openai("tpm")
    with pytest.raises(openai.RateLimitError) as info:  # 700 reserved > 600 per minute
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=700
        )
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "tokens"  # OpenAI's type for a tokens-per-minute limit
    assert "(TPM): Limit 600" in info.value.message
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=200
    )
    used = raw.parse().usage
    assert used is not None
    # Reserved ~200 + the prompt estimate at admission; settled to the real usage afterwards.
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= 600 - 200
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 600 - used.total_tokens - 5 - len(b'{"messages":[{"role":"user","content":"hi"}]}')


def test_max_concurrent_is_a_429_not_a_wait(keyed: Keyed) -> None:
    client = keyed.openai("one")
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count to fifty"}],
        max_tokens=64,
        stream=True,
    )
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert info.value.code == "rate_limit_exceeded"
    stream.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.2)


def test_a_new_key_works_without_a_restart(keyed: Keyed) -> None:
    key = add_key(keyed.keys_file, "late", "--rpm", "10")
    client = openai.OpenAI(base_url=f"{keyed.server.url}/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.models.list()
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "the keys file was not reloaded"
            time.sleep(0.25)


def test_usage_needs_an_admin_key(keyed: Keyed) -> None:
    assert keyed.post("plain", "/v1/usage", {}).status_code in (403, 405)
    r = httpx.get(f"{keyed.server.url}/v1/usage", headers={"Authorization": f"Bearer {keyed.keys['plain']}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    r = httpx.get(
        f"{keyed.server.url}/v1/usage?group_by=nope",
        headers={"Authorization": f"Bearer {keyed.keys['boss']}"},
    )
    assert r.status_code == 400


def test_ledger_totals_equal_the_usage_clients_saw(keyed: Keyed) -> None:
    client = keyed.openai("ledger")
    prompt = completion = 0
    seen: list[tuple[str, int, int]] = []
    for i in range(2):
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"say {i}"}], max_tokens=8
        )
        assert out.usage is not None
        prompt += out.usage.prompt_tokens
        completion += out.usage.completion_tokens
        seen.append(("chat", out.usage.prompt_tokens, out.usage.completion_tokens))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            prompt += chunk.usage.prompt_tokens
            completion += chunk.usage.completion_tokens
    text = client.completions.create(model="gpt-4o-mini", prompt="Once", max_tokens=4)
    assert text.usage is not None
    prompt += text.usage.prompt_tokens
    completion += text.usage.completion_tokens
    resp = client.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=16)
    assert resp.usage is not None
    prompt += resp.usage.input_tokens
    completion += resp.usage.output_tokens
    claude = anthropic.Anthropic(base_url=keyed.server.url, api_key=keyed.keys["ledger"], max_retries=0)
    with claude.messages.stream(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    seen.append(("msg", final.usage.input_tokens, final.usage.output_tokens))
    seen.append(("resp", resp.usage.input_tokens, resp.usage.output_tokens))
    # Anthropic's input_tokens leave out the prompt tokens read from the cache.
    prompt += final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    completion += final.usage.output_tokens

    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(
            f"{keyed.server.url}/v1/usage?group_by=key",
            headers={"Authorization": f"Bearer {keyed.keys['boss']}"},
        )
        assert r.status_code == 200
        rows = {row["key"]: row for row in r.json()["data"]}
        row = rows.get("ledger")
        if row is not None and row["requests"] >= 6:
            break
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.2)
    with sqlite3.connect(keyed.usage_db) as conn:
        per_route = list(
            conn.execute(
                "SELECT route, prompt_tokens, completion_tokens FROM usage WHERE key_name = 'ledger'"
            )
        )
    routes = {r for r, _, _ in per_route}
    assert row["requests"] == 6
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion), (per_route, seen)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"} <= routes

    usage = [sys.executable, "-m", "interference", "usage", "--usage-db", str(keyed.usage_db)]
    wide = {**os.environ, "COLUMNS": "200"}
    table = subprocess.run([*usage, "--by", "model"], capture_output=True, text=True, check=True, env=wide)
    assert "usage by model" in table.stdout and "completion" in table.stdout
    as_json = subprocess.run([*usage, "--by", "key", "--json"], capture_output=True, text=True, check=True)
    by_key = {row["key"]: row for row in json.loads(as_json.stdout)}
    assert by_key["ledger"]["prompt_tokens"] == prompt
    assert by_key["ledger"]["completion_tokens"] == completion


def test_an_unopenable_default_ledger_does_not_stop_serving(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": "/proc/no-such-dir"}
    with running_server("--no-embeddings", env=env, tmp=tmp_path) as server:
        out = server.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert out.usage is not None
        r = httpx.get(f"{server.url}/v1/usage")
        assert r.status_code == 503
        assert "usage ledger" in server.log


def test_an_explicit_ledger_that_cannot_open_stops_start_up(tmp_path: Path) -> None:
    bad = ("--no-embeddings", "--usage-db", "/proc/no-such-dir/u.db")
    with pytest.raises(RuntimeError, match="usage ledger"), running_server(*bad, tmp=tmp_path):
        pass


def test_embeddings_count_against_rpm_and_model_admin_routes_need_admin(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys = {
        "embed": add_key(keys_file, "embed", "--rpm", "2"),
        "user": add_key(keys_file, "user"),
        "boss": add_key(keys_file, "boss", "--admin"),
    }
    args = ("--keys-file", str(keys_file), "--usage-db", str(tmp_path / "usage.db"), "--parallel", "1")
    with running_server(*args, tmp=tmp_path) as server:
        fresh_window()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["embed"], max_retries=0)
        for _ in range(2):
            raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="a tree")
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert len(raw.parse().data[0].embedding) > 0
        with pytest.raises(openai.RateLimitError) as caught:
            client.embeddings.create(model="text-embedding-3-small", input="a tree")
        assert caught.value.code == "rate_limit_exceeded"
        assert int(caught.value.response.headers["retry-after"]) >= 1

        lister = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0)
        model = next(m.id for m in lister.models.list().data if getattr(m, "kind", "chat") == "chat")
        for path in (f"/v1/models/{model}/load", f"/v1/models/{model}/unload"):
            refused = httpx.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {keys['user']}"})
            assert refused.status_code == 403, refused.text
        allowed = httpx.post(
            f"{server.url}/v1/models/{model}/load",
            headers={"Authorization": f"Bearer {keys['boss']}"},
            timeout=120,
        )
        assert allowed.status_code == 200, allowed.text


def test_embeddings_reserve_their_prompt_only_and_every_route_sends_the_same_headers(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "embed", "--tpm", "200", "--rpm", "50")
    args = ("--keys-file", str(keys_file), "--usage-db", str(tmp_path / "usage.db"), "--parallel", "1")
    with running_server(*args, tmp=tmp_path) as server:
        fresh_window()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        text = "the quick brown fox jumps over the lazy dog " * 3  # about 35 tokens
        admitted: list[int] = []  # the tokens left after each admitted request
        with pytest.raises(openai.RateLimitError) as caught:
            for _ in range(20):
                raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=text)
                assert raw.headers["x-ratelimit-limit-tokens"] == "200"
                assert raw.headers["x-ratelimit-limit-requests"] == "50"
                admitted.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
        # No completion budget is reserved: several ~35-token requests fit in 200 before the refusal.
        assert len(admitted) >= 3 and admitted == sorted(admitted, reverse=True)
        assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "tokens"
        refused = caught.value.response
        assert refused.headers["x-ratelimit-limit-tokens"] == "200"
        assert int(refused.headers["x-ratelimit-remaining-tokens"]) < 60

        # The same headers on every route, for the limits the key has; Anthropic's envelope on its route.
        auth = {"Authorization": f"Bearer {key}"}
        msg = httpx.post(
            f"{server.url}/v1/messages",
            json={"model": "gpt-4o-mini", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            timeout=60,
        )
        assert msg.status_code == 429 and msg.json()["error"]["type"] == "rate_limit_error"
        routes = {  # each reserves more than the ~60 tokens left
            "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi"},
            "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
            "/v1/embeddings": {"model": "text-embedding-3-small", "input": text * 4},
        }
        names = {"x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"}
        for path, body in routes.items():
            reply = httpx.post(f"{server.url}{path}", json=body, headers=auth, timeout=60)
            assert reply.status_code == 429, (path, reply.text)
            assert reply.json()["error"]["type"] == "tokens", path
            assert names <= set(reply.headers), (path, reply.headers)
            assert names <= set(msg.headers)
