"""Real agent clients run whole tool loops through interference.

Each client (the OpenAI Agents SDK, pydantic-ai, Codex CLI, Claude Code) talks to interference, which
routes its model to a scripted tool-calling upstream (``tests/scripted_upstream.py``). The upstream
asks for one call of the client's shell or file tool that reads a file holding a fresh random token;
the client really runs it, sends the result back through interference, and the final answer quotes
the token. On the embedded model, Codex and Claude Code get a clear context error, and the SDK agents
finish a run. The npm clients are installed by ``scripts/test`` into ``.node-tools``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, running_server
from scripted_upstream import ANSWER_PREFIX, ScriptedUpstream

KEY = "sk-agents-test"
NODE_BIN = Path(__file__).resolve().parent.parent / ".node-tools" / "node_modules" / ".bin"
CLIENT_TIMEOUT = 120


@dataclass
class Agents:
    server: RunningServer
    upstream: ScriptedUpstream
    secret: str
    secret_file: Path

    @property
    def v1(self) -> str:
        return f"{self.server.url}/v1"


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    tmp = tmp_path_factory.mktemp("agents")
    secret = f"token-{secrets.token_hex(8)}"
    secret_file = tmp / "secret.txt"
    secret_file.write_text(secret + "\n")
    upstream = ScriptedUpstream(secret_file=str(secret_file)).start()
    config = tmp / "agents.toml"
    config.write_text(
        f"""parallel = 2
ctx_size = 4096

[[models]]
name = "scripted"

[[models.deployments]]
type = "openai"
base_url = "{upstream.url}/v1"
timeout = 60

[[models]]
name = "scripted-claude"

[[models.deployments]]
type = "anthropic"
base_url = "{upstream.url}"
timeout = 60
"""
    )
    try:
        with running_server("--config", str(config), "--api-key", KEY, tmp=tmp) as server:
            yield Agents(server, upstream, secret, secret_file)
    finally:
        upstream.stop()


def _node_tool(name: str) -> Path:
    path = NODE_BIN / name
    if not path.exists() or shutil.which("node") is None:
        pytest.skip(f"{name} is not installed in .node-tools (scripts/test installs it)")
    return path


def _read(path: str) -> str:
    """The tool the SDK agents get (a tiny model may pass any path)."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"error: {exc}"


def _asked_for_the_tool(agents: Agents, since: int, tool: str) -> None:
    """The upstream offered ``tool`` and, on a later request, got its result back."""
    offered = agents.upstream.tools_offered()[since:]
    assert any(tool in names for names in offered), offered


# ---------------------------------------------------------------------- OpenAI Agents SDK


def _agents_sdk_run(base_url: str, model_name: str, *, responses: bool, agents: Agents | None) -> str:
    agents_sdk = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents_sdk.set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)
    model: Any
    if responses:
        model = agents_sdk.OpenAIResponsesModel(model=model_name, openai_client=client)
    else:
        model = agents_sdk.OpenAIChatCompletionsModel(model=model_name, openai_client=client)

    @agents_sdk.function_tool
    def read_file(path: str) -> str:
        """Read a text file and return its content."""
        return _read(path)

    agent = agents_sdk.Agent(
        name="reader",
        instructions="Use read_file to read files, then quote what it returned.",
        model=model,
        # On the embedded model: no tool, and a short answer (a tiny model on two CPUs is slow).
        tools=[read_file] if agents else [],
        # Greedy, so that the short answer ends before max_tokens (the SDK raises on an incomplete one).
        model_settings=agents_sdk.ModelSettings(max_tokens=None, temperature=None)
        if agents
        else agents_sdk.ModelSettings(max_tokens=128, temperature=0.0),
    )
    prompt = f"Read {agents.secret_file} and tell me what it says." if agents else "Say hi."

    async def run() -> str:
        try:
            result = await agents_sdk.Runner.run(agent, prompt, max_turns=4)
            return str(result.final_output)
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize("responses", [True, False], ids=["responses", "chat"])
def test_agents_sdk_tool_loop(agents: Agents, responses: bool) -> None:
    since = len(agents.upstream.bodies)
    output = _agents_sdk_run(agents.v1, "scripted", responses=responses, agents=agents)
    assert agents.secret in output and output.startswith(ANSWER_PREFIX)
    _asked_for_the_tool(agents, since, "read_file")


# ---------------------------------------------------------------------- pydantic-ai


def _pydantic_ai_agent(kind: str, base_url: str, model_name: str, *, with_tool: bool = True) -> Any:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    if kind == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        model: Any = AnthropicModel(model_name, provider=AnthropicProvider(base_url=base_url, api_key=KEY))
    else:
        from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
        from pydantic_ai.providers.openai import OpenAIProvider

        provider = OpenAIProvider(base_url=f"{base_url}/v1", api_key=KEY)
        cls = OpenAIResponsesModel if kind == "responses" else OpenAIChatModel
        model = cls(model_name, provider=provider)
    if not with_tool:  # the embedded model: no tool, and a short answer
        return pydantic_ai.Agent(model, model_settings={"max_tokens": 32})
    agent = pydantic_ai.Agent(model, instructions="Use read_file to read files, then quote what it returned.")

    @agent.tool_plain
    def read_file(path: str) -> str:
        """Read a text file and return its content."""
        return _read(path)

    return agent


@pytest.mark.parametrize("kind", ["responses", "chat", "anthropic"])
def test_pydantic_ai_tool_loop(agents: Agents, kind: str) -> None:
    since = len(agents.upstream.bodies)
    name = "scripted-claude" if kind == "anthropic" else "scripted"
    agent = _pydantic_ai_agent(kind, agents.server.url, name)
    result = agent.run_sync(f"Read {agents.secret_file} and tell me what it says.")
    assert agents.secret in result.output and result.output.startswith(ANSWER_PREFIX)
    _asked_for_the_tool(agents, since, "read_file")


# ---------------------------------------------------------------------- Codex CLI


def _codex(tmp_path: Path, base_url: str, model: str, prompt: str) -> subprocess.CompletedProcess[str]:
    codex = _node_tool("codex")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"""model = "{model}"
model_provider = "interference"

[model_providers.interference]
name = "interference"
base_url = "{base_url}"
env_key = "INTERFERENCE_KEY"
wire_api = "responses"
"""
    )
    env = {**os.environ, "CODEX_HOME": str(home), "INTERFERENCE_KEY": KEY, "HOME": str(tmp_path)}
    return subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", "-s", "danger-full-access", prompt],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_codex_tool_loop(agents: Agents, tmp_path: Path) -> None:
    since = len(agents.upstream.bodies)
    done = _codex(tmp_path, agents.v1, "scripted", f"Print the content of {agents.secret_file}.")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{ANSWER_PREFIX}" in done.stdout and agents.secret in done.stdout
    _asked_for_the_tool(agents, since, "exec_command")


def test_codex_on_the_embedded_model_gets_a_context_error(tmp_path: Path) -> None:
    with running_server("--api-key", KEY, tmp=tmp_path) as server:
        done = _codex(tmp_path, f"{server.url}/v1", "gpt-4o-mini", "Say hi.")
    output = done.stdout + done.stderr
    # Codex words our 400 context_length_exceeded as its own context-window error.
    assert done.returncode != 0 and "ERROR" in output, output
    assert "context_length_exceeded" in output or "context window" in output, output


# ---------------------------------------------------------------------- Claude Code


def _claude(tmp_path: Path, base_url: str, model: str, prompt: str) -> subprocess.CompletedProcess[str]:
    claude = _node_tool("claude")
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return subprocess.run(
        [str(claude), "-p", prompt, "--model", model, "--allowedTools", "Bash"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "model", ["scripted", "scripted-claude"], ids=["openai-upstream", "anthropic-upstream"]
)
def test_claude_code_tool_loop(agents: Agents, tmp_path: Path, model: str) -> None:
    since = len(agents.upstream.bodies)
    done = _claude(tmp_path, agents.server.url, model, f"Print the content of {agents.secret_file}.")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ANSWER_PREFIX in done.stdout and agents.secret in done.stdout
    _asked_for_the_tool(agents, since, "Bash")


def test_claude_code_on_the_embedded_model_gets_a_context_error(tmp_path: Path) -> None:
    with running_server("--api-key", KEY, tmp=tmp_path) as server:
        done = _claude(tmp_path, server.url, "claude-haiku-4-5", "Say hi.")
    output = done.stdout + done.stderr
    assert "prompt is too long" in output.lower(), output


# ---------------------------------------------------------------------- SDK agents on the embedded model


@pytest.mark.parametrize("responses", [True, False], ids=["responses", "chat"])
def test_agents_sdk_on_the_embedded_model_finishes(server: RunningServer, responses: bool) -> None:
    output = _agents_sdk_run(f"{server.url}/v1", "gpt-4o-mini", responses=responses, agents=None)
    assert isinstance(output, str)


@pytest.mark.parametrize("kind", ["responses", "chat", "anthropic"])
def test_pydantic_ai_on_the_embedded_model_finishes(server: RunningServer, kind: str) -> None:
    name = "claude-haiku-4-5" if kind == "anthropic" else "gpt-4o-mini"
    agent = _pydantic_ai_agent(kind, server.url, name, with_tool=False)
    result = agent.run_sync("Say hi.")
    assert isinstance(result.output, str)
