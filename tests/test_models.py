"""Many local models under one memory budget: lazy loading, LRU eviction, pinning, idle TTL, the load
timeout, load/unload routes and readiness, against real servers and a models dir of GGUF copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, free_port, running_server, serve_command
from interference.engine import embedded_model_path
from interference.engine._llama import quiet_llama_logs
from interference.engine.footprint import estimate_footprint, probe_gguf
from interference.settings import ConfigError, EngineOptions, load_settings

NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens: it runs to max_tokens


def _place(target: Path) -> Path:
    """A copy of the embedded GGUF (a hard link where the file system allows it)."""
    try:
        os.link(embedded_model_path(), target)
    except OSError:
        shutil.copyfile(embedded_model_path(), target)
    return target


@pytest.fixture(scope="module")
def one_model_mib() -> int:
    """The estimate the server will make for one copy served with one slot (the prompt cache is one
    pool for all models, not part of any model's estimate)."""
    quiet_llama_logs()
    facts = probe_gguf(embedded_model_path())
    options = EngineOptions()
    return estimate_footprint(
        facts, ctx_size=0, parallel=1, batch_size=512, cache_type="f16", cache_ram_mib=options.cache_ram
    ).total_mib


@pytest.fixture()
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("alpha", "beta", "gamma"):
        _place(directory / f"{name}.gguf")
    return directory


def _serve(models_dir: Path, tmp: Path, *args: str) -> Any:
    return running_server(
        "--models-dir", str(models_dir), "--no-embeddings", "--parallel", "1", *args, tmp=tmp
    )


def _chat(http: httpx.Client, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}
    return http.post("/v1/chat/completions", json=body)


def _statuses(http: httpx.Client) -> dict[str, str]:
    return {m["id"]: m["status"] for m in http.get("/v1/models").json()["data"]}


def _counter(server: RunningServer, name: str, model: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'{name}{{model="local:{model}"}}'):
            return float(line.rpartition(" ")[2])
    return 0.0


def _wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_model_loads_on_its_first_request_and_new_files_are_picked_up(
    models_dir: Path, tmp_path: Path
) -> None:
    with _serve(models_dir, tmp_path, "--lazy", "--api-key", "sk-test") as server:
        headers = {"Authorization": "Bearer sk-test"}
        with httpx.Client(base_url=server.url, timeout=120, headers=headers) as http:
            assert httpx.get(f"{server.url}/ready").status_code == 200  # public, and nothing to preload
            statuses = _statuses(http)
            assert statuses["alpha"] == statuses["beta"] == statuses["gamma"] == "unloaded"
            assert statuses["gpt-4o"] == "unloaded"  # --lazy: the default model waits too
            card = http.get("/v1/models/alpha").json()
            assert card["size_mb"] > 1 and card["memory_mb"] > card["size_mb"]
            assert card["context_length"] == 2048

            reply = _chat(http, "alpha")
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == "alpha"
            statuses = _statuses(http)
            assert statuses["alpha"] == "loaded" and statuses["beta"] == "unloaded"
            assert _counter(server, "interference_model_loads_total", "alpha") == 1

            _place(models_dir / "delta.gguf")
            assert _statuses(http)["delta"] == "unloaded"
            (models_dir / "epsilon.gguf").write_bytes(b"not a model")
            _place(models_dir / "zeta.gguf")
            assert _chat(http, "zeta").status_code == 200  # a request finds a new file too
            assert "epsilon" not in _statuses(http)

            assert httpx.post(f"{server.url}/v1/models/beta/load").status_code == 401
            loaded = http.post("/v1/models/beta/load")
            assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
            missing = http.post("/v1/models/nope/load")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_idle_models_are_evicted_least_recently_used_first_but_never_a_pinned_one(
    models_dir: Path, tmp_path: Path, one_model_mib: int
) -> None:
    pinned = _place(tmp_path / "pinned.gguf")
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[models]]\nname = "keeper"\npin = true\n'
        f'[[models.deployments]]\ntype = "local"\npath = "{pinned}"\nparallel = 1\n'
    )
    budget = 3 * one_model_mib + one_model_mib // 2  # room for three
    args = ("--lazy", "--config", str(config), "--memory-budget", str(budget))
    with _serve(models_dir, tmp_path, *args) as server, server.http() as http:
        for model in ("keeper", "alpha", "beta"):  # keeper is the least recently used of all
            assert _chat(http, model).status_code == 200
        assert _chat(http, "alpha").status_code == 200  # beta is now the least recently used evictable

        assert _chat(http, "gamma").status_code == 200
        statuses = _statuses(http)
        assert (statuses["keeper"], statuses["alpha"], statuses["beta"], statuses["gamma"]) == (
            "loaded", "loaded", "unloaded", "loaded",
        )  # fmt: skip

        assert _chat(http, "beta").status_code == 200  # alpha (used before gamma) goes now
        statuses = _statuses(http)
        assert (statuses["keeper"], statuses["alpha"], statuses["beta"], statuses["gamma"]) == (
            "loaded", "unloaded", "loaded", "loaded",
        )  # fmt: skip
        assert _counter(server, "interference_model_evictions_total", "beta") == 1
        assert _counter(server, "interference_model_evictions_total", "alpha") == 1
        assert _counter(server, "interference_model_evictions_total", "keeper") == 0
        assert server.metrics()["interference_models_loaded"] == 3


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_budget_for_two_models_with_the_default_prompt_cache_evicts_for_a_third(
    models_dir: Path, tmp_path: Path, one_model_mib: int
) -> None:
    pinned = _place(tmp_path / "pinned.gguf")
    config = tmp_path / "models.toml"
    config.write_text(  # no engine keys: --parallel 1 from the command line applies; "short" sets its own
        f'[[models]]\nname = "keeper"\npin = true\n'
        f'[[models.deployments]]\ntype = "local"\npath = "{pinned}"\n'
        f'[[models]]\nname = "short"\n[[models.deployments]]\ntype = "local"\n'
        f'path = "{models_dir / "gamma.gguf"}"\nctx_size = 1024\n'
    )
    budget = 2 * one_model_mib + one_model_mib // 2  # room for two, with the default --cache-ram (2048)
    args = ("--lazy", "--config", str(config), "--memory-budget", f"{budget}MiB", "--load-timeout", "2")
    with _serve(models_dir, tmp_path, *args) as server, server.http() as http:
        peak = _rss_mib(server.process.pid)
        cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert cards["keeper"]["memory_mb"] == cards["alpha"]["memory_mb"] == one_model_mib  # one slot
        assert cards["short"]["context_length"] == 1024  # its own key over the command line's

        for model in ("keeper", "alpha"):
            assert _chat(http, model).status_code == 200
            peak = max(peak, _rss_mib(server.process.pid))
        memory = http.get("/v1/models").json()["memory"]
        assert memory["budget_mb"] == budget and not memory["budget_auto"]
        assert memory["models_mb"] == 2 * one_model_mib and memory["kv_mb"] > 0
        assert memory["prompt_cache_limit_mb"] <= budget - memory["models_mb"]

        assert _chat(http, "beta").status_code == 200  # alpha, the least recently used unpinned, goes
        statuses = _statuses(http)
        assert (statuses["keeper"], statuses["alpha"], statuses["beta"]) == ("loaded", "unloaded", "loaded")
        loaded = http.post("/v1/models/alpha/load")  # the load route evicts beta the same way
        assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
        assert _statuses(http)["beta"] == "unloaded"
        peak = max(peak, _rss_mib(server.process.pid))
        with ThreadPoolExecutor(4) as pool:  # concurrent first requests of the evicted model share one load
            replies = list(pool.map(lambda _: _chat(http, "beta"), range(4)))
        assert [r.status_code for r in replies] == [200] * 4
        assert _counter(server, "interference_model_loads_total", "beta") == 2
        peak = max(peak, _rss_mib(server.process.pid))

        metrics = server.metrics()
        assert metrics["interference_memory_budget_bytes"] == budget * 2**20
        assert metrics["interference_memory_models_bytes"] <= budget * 2**20
        assert metrics["interference_model_evictions_total"] == 3  # alpha, beta, alpha again
        assert _statuses(http)["keeper"] == "loaded"  # pinned: never evicted
        assert peak < budget, f"peak RSS {peak:.0f} MiB over the budget of {budget} MiB"


def test_a_plain_serve_has_an_auto_budget(server: RunningServer) -> None:
    memory = httpx.get(f"{server.url}/v1/models", timeout=10).json()["memory"]
    assert memory["budget_auto"] and memory["budget_mb"] > memory["models_mb"] > 0
    httpx.post(
        f"{server.url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"}, timeout=60
    )
    memory = httpx.get(f"{server.url}/v1/models", timeout=10).json()["memory"]
    assert 87 < memory["embedding_mb"] < 200  # the bundled embedding model, counted once loaded
    line = next(line for line in server.log.splitlines() if "serving on" in line)
    assert "memory budget" in line and "auto" in line and "embedding model" in line


def test_an_idle_model_unloads_after_its_ttl(models_dir: Path, tmp_path: Path) -> None:
    short = _place(tmp_path / "short.gguf")
    config = tmp_path / "ttl.toml"
    config.write_text(
        f'[[models]]\nname = "short"\nttl = 1\n'
        f'[[models.deployments]]\ntype = "local"\npath = "{short}"\nparallel = 1\n'
    )
    with _serve(models_dir, tmp_path, "--lazy", "--config", str(config)) as server, server.http() as http:
        assert _chat(http, "short").status_code == 200
        assert _chat(http, "alpha").status_code == 200  # --model-ttl 0: never unloads
        _wait_until(lambda: _statuses(http)["short"] == "unloaded", "the idle model never unloaded")
        assert _statuses(http)["alpha"] == "loaded"
        assert _counter(server, "interference_model_unloads_total", "short") == 1
        assert _chat(http, "short").status_code == 200  # and it comes back on the next request
        assert _counter(server, "interference_model_loads_total", "short") == 2


def test_an_unload_request_lets_the_running_stream_finish(models_dir: Path, tmp_path: Path) -> None:
    with (
        _serve(models_dir, tmp_path, "--lazy") as server,
        server.http() as http,
        ThreadPoolExecutor(1) as pool,
    ):
        body = {
            "model": "alpha",
            "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 48,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        events: list[str] = []
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            unload = pool.submit(http.post, "/v1/models/alpha/unload")
            events += [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        finishes = [json.loads(e)["choices"][0].get("finish_reason") for e in events[:-1]]
        assert finishes[-1] == "length"
        assert sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["delta"].get("content")) >= 40
        answer = unload.result(timeout=60)
        assert answer.status_code == 200 and answer.json()["status"] == "unloaded"
        assert _counter(server, "interference_model_unloads_total", "alpha") == 1


def test_a_model_waits_for_room_until_the_load_timeout_then_gets_a_503(
    models_dir: Path, tmp_path: Path, one_model_mib: int
) -> None:
    wide = tmp_path / "wide.toml"  # eight slots and a large prompt cache: more than the budget
    wide.write_text(
        f'[[models]]\nname = "wide"\n[[models.deployments]]\ntype = "local"\n'
        f'path = "{models_dir / "gamma.gguf"}"\nparallel = 8\ncache_ram = 8192\n'
    )
    budget = one_model_mib + one_model_mib // 2  # room for one
    args = ("--lazy", "--memory-budget", str(budget), "--load-timeout", "1", "--config", str(wide))
    with _serve(models_dir, tmp_path, *args) as server, server.http() as http:
        alone = _chat(http, "wide")
        assert alone.status_code == 503
        assert alone.json()["error"]["code"] == "insufficient_memory"
        assert f"{budget} MiB" in alone.json()["error"]["message"]

        body = {
            "model": "alpha",
            "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 1900,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: dropping it would close the stream
            assert any(line.startswith("data: ") for line in lines)
            busy = _chat(http, "beta")  # alpha is busy: beta waits one second for it, then gives up
            assert busy.status_code == 503, busy.text
            assert busy.json()["error"]["code"] == "insufficient_memory"
            assert f"{budget} MiB" in busy.json()["error"]["message"]
        # The stream is closed: alpha goes idle, and beta takes its place.
        _wait_until(lambda: server.metrics()["interference_engine_slots_active"] == 0, "the slot stayed busy")
        assert _chat(http, "beta").status_code == 200
        assert _statuses(http)["alpha"] == "unloaded"


def test_concurrent_first_requests_share_one_load(models_dir: Path, tmp_path: Path) -> None:
    with _serve(models_dir, tmp_path, "--lazy") as server, server.http() as http:
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda _: _chat(http, "beta"), range(10)))
        assert [r.status_code for r in replies] == [200] * 10
        assert _counter(server, "interference_model_loads_total", "beta") == 1


def test_ready_answers_503_until_the_start_up_model_is_loaded(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "ready.log").open("wb")
    proc = subprocess.Popen(
        serve_command("--port", str(port), "--no-embeddings", "--parallel", "8"),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INTERFERENCE_THREADS": "2"},
    )
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[int, int]] = []  # (health, ready) until ready
    try:
        deadline = time.monotonic() + 60
        while not seen or seen[-1][1] != 200:
            assert time.monotonic() < deadline and proc.poll() is None, "the server never became ready"
            try:
                seen.append((httpx.get(f"{url}/health").status_code, httpx.get(f"{url}/ready").status_code))
            except httpx.HTTPError:
                continue
        card = httpx.get(f"{url}/v1/models/gpt-4o").json()
        assert card["status"] == "loaded"
        loading = [pair for pair in seen if pair[1] == 503]
        # The first probe waits in the listening socket's backlog until the app starts, and the 8-slot
        # model takes longer to load than one round trip: at least one answer comes while it loads.
        assert loading, seen
        assert all(health == 200 for health, _ in loading)  # alive while the model loads
        assert httpx.post(f"{url}/v1/models/gpt-4o/unload").json()["status"] == "unloaded"
        assert httpx.get(f"{url}/ready").status_code == 200  # ready stays: the model reloads on demand
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_model_settings_come_from_flags_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'models_dir = "/srv/models"\nmodel_ttl = 30\n'
        '[[models]]\nname = "x"\nttl = 5\npin = true\n[[models.deployments]]\ntype = "local"\n'
    )
    env = {"INTERFERENCE_MEMORY_BUDGET": "4096", "INTERFERENCE_MODEL_TTL": "60", "INTERFERENCE_LAZY": "1"}
    settings = load_settings({"load_timeout": 7.5}, env=env, config_file=config)
    assert settings.models_dir == "/srv/models" and settings.memory_budget == 4096
    assert settings.model_ttl == 60 and settings.lazy and settings.load_timeout == 7.5  # env beats file
    assert settings.models[0].ttl == 5 and settings.models[0].pin
    with pytest.raises(ConfigError, match="memory_budget"):
        load_settings({}, env={"INTERFERENCE_MEMORY_BUDGET": "0"})


def test_a_start_up_model_larger_than_the_budget_stops_start_up_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        serve_command("--port", str(free_port()), "--no-embeddings", "--memory-budget", "64"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("interference: error:")]
    assert len(errors) == 1 and "64 MiB" in errors[0], done.stderr
