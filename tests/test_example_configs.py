"""Every examples/ file loads with ``interference models --config FILE``; bad configs fail clearly."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from interference.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))
KEY_VARS = {
    "VLLM_API_KEY": "sk-vllm-test",
    "OPENAI_API_KEY": "sk-openai-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
}


def test_there_are_examples_for_every_kind_of_upstream() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "vllm",
        "ollama",
        "llama-server",
        "openai",
        "mix",
        "vllm-cluster",
        "ray-serve",
        "anthropic",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var, value in KEY_VARS.items():
        monkeypatch.setenv(var, value)
    assert main(["models", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for entry in tomllib.loads(path.read_text()).get("models", []):
        assert f"{entry['name']}  ->" in out
    assert not any(key in out for key in KEY_VARS.values())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


UPSTREAM = (
    '[[models]]\nname = "m"\n[[models.deployments]]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (UPSTREAM + 'api_key_env = "INTERFERENCE_TEST_UNSET_KEY"\n', "models[0].deployments[0].api_key_env"),
        (UPSTREAM + 'api_key = "k"\napi_key_env = "HOME"\n', "models[0].deployments[0].api_key_env"),
        (UPSTREAM.replace("http://", "ftp://"), "models[0].deployments[0].base_url"),
        (UPSTREAM + "weight = 0\n", "models[0].deployments[0].weight"),
        (UPSTREAM + 'routing = "random"\n', "models[0].deployments[0].routing"),
        (UPSTREAM.replace('"m"\n', '"m"\nrouting = "random"\n'), "models[0].routing"),
        (UPSTREAM.replace('type = "openai"', 'type = "grpc"'), "models[0].deployments[0]"),
        ('[[models]]\nname = "m"\ndeployments = []\n', "models[0].deployments"),
        (UPSTREAM + UPSTREAM.replace('"m"', '"n"\naliases = ["m"]'), "models[1].aliases"),
    ],
)
def test_bad_gateway_config_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    monkeypatch.delenv("INTERFERENCE_TEST_UNSET_KEY", raising=False)
    assert main(["models", "--config", str(_write(tmp_path, text))]) == 2
    err = capsys.readouterr().err.strip()
    assert f"'{key}'" in err and len(err.splitlines()) == 1, err


def test_cli_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, UPSTREAM + 'api_key_env = "INTERFERENCE_TEST_UNSET_KEY"\n')
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "interference", "serve", "--port", "0", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"interference: error: invalid setting 'models[0].deployments[0].api_key_env' in {path}: "
        "environment variable INTERFERENCE_TEST_UNSET_KEY is not set"
    ]
