"""The reference client, ``examples/test_interference.py``, run unchanged with the legacy openai 0.28 SDK."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from conftest import ROOT, running_server

SCRIPT = ROOT / "examples" / "test_interference.py"
LEGACY_VENV = ROOT / ".venv-legacy"
LEGACY_OPENAI = "openai==0.28.1"

# Runs the script unchanged, except that every ChatCompletion.create call is made with stream=False.
NON_STREAMING = """
import runpy, sys, openai
create = openai.ChatCompletion.create
openai.ChatCompletion.create = lambda *a, **k: create(*a, **{**k, "stream": False})
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def _legacy_python() -> Path:
    """A virtualenv of its own with the legacy SDK (created once, then reused)."""
    python = LEGACY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import openai, sys; sys.exit(openai.version.VERSION != '0.28.1')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(LEGACY_VENV)
    subprocess.run([str(python), "-m", "pip", "install", "-q", LEGACY_OPENAI], check=True, timeout=600)
    return python


def _port_1337_taken(wait: float = 0.0) -> bool:
    """Whether another program listens on 1337, waiting up to ``wait`` seconds for it to go away (a
    server stopped by an earlier test can hold it for a moment). Like the server, the probe binds with
    SO_REUSEADDR, so connections of a finished server still in TIME_WAIT do not count."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", 1337))
            except OSError:
                if time.monotonic() >= deadline:
                    return True
            else:
                return False
        time.sleep(0.5)


@pytest.fixture(scope="module")
def legacy_python() -> Path:
    return _legacy_python()


@pytest.fixture(scope="module")
def server_on_1337(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if _port_1337_taken(wait=60.0):
        pytest.skip("port 1337 is taken by another program; the seed client only talks to localhost:1337")
    with running_server(port=1337, tmp=tmp_path_factory.mktemp("seed")) as s:
        yield s


def test_script_is_the_seed_verbatim() -> None:
    text = SCRIPT.read_text()
    assert 'openai.api_base = "http://localhost:1337"' in text
    assert 'openai.api_key = ""' in text
    assert "stream=True," in text


def test_seed_client_streaming(legacy_python: Path, server_on_1337: object) -> None:
    done = subprocess.run([str(legacy_python), str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 20, done.stdout


def test_seed_client_non_streaming(legacy_python: Path, server_on_1337: object) -> None:
    done = subprocess.run(
        [str(legacy_python), "-c", NON_STREAMING, str(SCRIPT)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 20, done.stdout


def test_legacy_sdk_is_isolated() -> None:
    """The suite itself runs the modern SDK; the legacy one lives only in its own environment."""
    import openai

    assert int(openai.__version__.split(".")[0]) >= 1
    assert sys.prefix != str(LEGACY_VENV)
