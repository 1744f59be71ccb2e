"""The command line and settings precedence (flags > env > TOML file > defaults)."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RunningServer, free_port, serve_command
from interference.settings import DEFAULT_ALIASES, ConfigError, load_settings


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interference", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for word in ("serve", "models", "chat"):
        assert word in done.stdout
    serve_help = run("serve", "--help").stdout
    for flag in ("--host", "--port", "--model", "--ctx-size", "--threads", "--config", "--parallel"):
        assert flag in serve_help


def test_models_lists_default_and_aliases() -> None:
    done = run("models")
    assert done.returncode == 0, done.stderr
    assert "SmolLM2-135M-Instruct.Q4_1" in done.stdout
    for alias in DEFAULT_ALIASES:
        assert alias in done.stdout


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("interference: error:")
    return lines[0]


def test_missing_model_file(tmp_path: Path) -> None:
    done = subprocess.run(
        serve_command("--port", str(free_port()), "--model", str(tmp_path / "nope.gguf")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "not found" in _one_line_error(done)


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00\xff" * 5000)
    done = subprocess.run(
        serve_command("--port", str(free_port()), "--model", str(bad)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "broken.gguf" in _one_line_error(done)


def test_port_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        done = subprocess.run(serve_command("--port", str(port)), capture_output=True, text=True, timeout=60)
    assert f"127.0.0.1:{port}" in _one_line_error(done)


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('port = "not a port"\n')
    done = run("models", "--config", str(cfg))
    assert done.returncode == 2
    assert "'port'" in _one_line_error(done)
    cfg.write_text("parallel = 0\n")
    assert "'parallel'" in _one_line_error(run("models", "--config", str(cfg)))
    cfg.write_text("[broken\n")
    assert "TOML" in _one_line_error(run("models", "--config", str(cfg)))
    assert "not found" in _one_line_error(run("models", "--config", str(tmp_path / "missing.toml")))


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 2000\nthreads = 3\nctx_size = 4096\naliases = ["from-file"]\n')
    env = {"INTERFERENCE_PORT": "3000", "INTERFERENCE_THREADS": "5"}
    s = load_settings({"port": 4000}, env=env, config_file=cfg)
    assert s.port == 4000  # flag
    assert s.threads == 5  # env beats file
    assert s.ctx_size == 4096  # file beats default
    assert s.aliases == ("from-file",)
    assert s.host == "127.0.0.1"  # default
    s = load_settings({}, env={"INTERFERENCE_CONFIG": str(cfg), "INTERFERENCE_ALIASES": "a, b"})
    assert s.port == 2000
    assert s.aliases == ("a", "b")
    assert load_settings({}, env={}).port == 1337


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="'threads'"):
        load_settings({"threads": -1}, env={})
    with pytest.raises(ConfigError, match="'port'"):
        load_settings({}, env={"INTERFERENCE_PORT": "many"})


def test_quantized_kv_cache_serves(tmp_path: Path) -> None:
    from conftest import running_server

    with running_server("--cache-type", "q8_0", "--parallel", "2", tmp=tmp_path) as s:
        r = s.http().post(
            "/v1/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        )
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 5


def test_chat_and_bench_commands_talk_to_a_server(server: RunningServer) -> None:
    done = run("chat", "Say hi.", "--url", f"{server.url}/v1", "--max-tokens", "6", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    done = run("bench", "--url", f"{server.url}/v1", "--concurrency", "1,2", "--max-tokens", "8", timeout=120)
    assert done.returncode == 0, done.stderr
    levels = [json.loads(line) for line in done.stdout.splitlines()]
    assert [lvl["concurrency"] for lvl in levels] == [1, 2]
    assert all(lvl["ok"] == lvl["concurrency"] and lvl["errors"] == 0 for lvl in levels)
    assert all(lvl["aggregate_tps"] > 0 and lvl["ttft_p50_s"] > 0 for lvl in levels)
    done = run("chat", "Hi", "--url", f"{server.url}/v1", "--model", "no-such-model", timeout=60)
    assert done.returncode == 1
    assert "404" in done.stderr


def test_models_shows_configured_models_winning_alias_clashes(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[[models]]\nname = "big"\naliases = ["gpt-4o"]\n'
        '[[models.deployments]]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    lines = run("models", "--config", str(cfg)).stdout.splitlines()
    assert lines[0].startswith("big") and "gpt-4o" in lines[0]
    default = next(line for line in lines if line.startswith("SmolLM2"))
    assert "gpt-4o-mini" in default and "gpt-4o," not in default and not default.endswith("gpt-4o")


def test_every_setting_with_a_flag_is_on_the_command_line() -> None:
    from interference.cli import build_parser
    from interference.settings import Settings, setting_flags

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve_dests = {a.dest for a in sub.choices["serve"]._actions}
    models_dests = {a.dest for a in sub.choices["models"]._actions}
    flags = setting_flags()
    assert set(flags) <= serve_dests
    assert {n for n, f in flags.items() if f.group not in ("server", "limits")} <= models_dests
    assert set(flags) <= set(Settings.model_fields)
    # Flags given on the command line land on the same fields the environment and the file fill.
    args = build_parser().parse_args(["serve", "--lazy", "--no-embeddings", "--no-repack", "-np", "3"])
    cli = {k: getattr(args, k) for k in flags}
    s = load_settings(cli, env={"INTERFERENCE_PARALLEL": "5", "INTERFERENCE_LAZY": "false"})
    assert (s.lazy, s.embeddings, s.repack, s.parallel) == (True, False, False, 3)
