"""What Claude Code sends, on the embedded model and through upstreams; reasoning from thinking models.

Claude Code sends ``thinking``, ``context_management``, ``cache_control``, ``metadata`` and
``anthropic-beta`` on every request whatever the model: none of them may be refused. A prompt that does
not fit is refused in Anthropic's words, which Claude Code acts on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from claude_code_request import BETA, TOOL_NAMES, claude_code_body
from test_anthropic import _events
from test_chat_template import _with_template

import fake_anthropic
from conftest import RunningServer, running_server
from fake_anthropic import FakeAnthropic
from fake_upstream import PIECES, REASONING, FakeUpstream, gateway, upstream_gateway
from interference.engine import embedded_model_path

MODEL = "claude-sonnet-4-5"  # a default alias of the embedded model
TOO_LONG = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum$")


def _post(
    server: RunningServer, body: dict[str, Any], path: str = "/v1/messages?beta=true"
) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": BETA, "x-api-key": "sk-local"}
    with server.http() as http:
        return http.post(path, json=body, headers=headers)


def test_claude_code_fields_are_accepted_on_the_local_model(server: RunningServer) -> None:
    body = claude_code_body(MODEL, "Say hi.", system_chars=200)
    body["tools"] = body["tools"][:3]
    reply = _post(server, body)
    assert reply.status_code == 200, reply.text
    message = reply.json()
    assert message["type"] == "message" and message["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert message["content"][0]["type"] in ("text", "tool_use")  # no thinking mode: no thinking
    counted = _post(server, body, "/v1/messages/count_tokens?beta=true")
    assert counted.status_code == 200, counted.text
    usage = message["usage"]
    assert counted.json()["input_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]


def _tool_loop_history(prompt: str) -> list[dict[str, Any]]:
    """A Claude Code turn after one Bash call: its thinking, text and tool_use, the tool's result with
    ``cache_control``, and a reminder as a system message between the turns."""
    cached = {"type": "ephemeral"}
    thought = {"type": "thinking", "thinking": "List them.", "signature": "c2lnbmF0dXJl"}
    call = {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_01A",
        "content": [{"type": "text", "text": "notes.txt", "cache_control": cached}],
    }
    return [
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [thought, {"type": "text", "text": "Listing."}, call]},
        {"role": "system", "content": "Reminder: be brief."},
        {"role": "user", "content": [result, {"type": "text", "text": "Go on.", "cache_control": cached}]},
        {
            "role": "assistant",
            "content": [{"type": "redacted_thinking", "data": "b3BhcXVl"}, {"type": "text", "text": "Done."}],
        },
        {"role": "user", "content": "Thanks."},
    ]


@pytest.mark.parametrize(
    "tool_choice",
    [
        {"type": "auto"},
        {"type": "auto", "disable_parallel_tool_use": True},
        {"type": "any"},
        {"type": "tool", "name": "Bash"},
        {"type": "none"},
    ],
)
def test_a_claude_code_tool_loop_turn_on_the_local_model(
    server: RunningServer, tool_choice: dict[str, Any]
) -> None:
    body = claude_code_body(MODEL, "List the files.", system_chars=200)
    body.update(
        messages=_tool_loop_history("List the files."),
        tools=body["tools"][:4],
        tool_choice=tool_choice,
        max_tokens=32000,
        temperature=0,
        cache_control={"type": "ephemeral"},
    )
    body["tools"][0]["cache_control"] = {"type": "ephemeral"}
    reply = _post(server, body)
    assert reply.status_code == 200, reply.text
    message = reply.json()
    kinds = [block["type"] for block in message["content"]]
    assert "thinking" not in kinds  # the embedded model's template has no thinking mode
    if tool_choice["type"] in ("any", "tool"):  # grammar-constrained: always a call that parses
        assert message["stop_reason"] == "tool_use" and "tool_use" in kinds
        call = next(block for block in message["content"] if block["type"] == "tool_use")
        assert isinstance(call["input"], dict) and "command" in call["input"]
        if tool_choice["type"] == "tool":
            assert call["name"] == "Bash"
    if tool_choice["type"] == "none":
        assert kinds == ["text"]
    counted = _post(server, body, "/v1/messages/count_tokens?beta=true").json()["input_tokens"]
    assert counted == message["usage"]["input_tokens"] + message["usage"]["cache_read_input_tokens"]


def test_a_prompt_too_long_is_refused_in_anthropic_words(server: RunningServer) -> None:
    body = claude_code_body(MODEL, "List the files.", system_chars=60_000, stream=True)
    assert len(body["tools"]) == len(TOOL_NAMES) == 24
    reply = _post(server, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    found = TOO_LONG.match(error["error"]["message"])
    assert found is not None, error
    tokens, limit = int(found[1]), int(found[2])
    assert tokens > limit > 0
    counted = _post(server, {**body, "stream": False}, "/v1/messages/count_tokens")
    assert counted.json()["input_tokens"] == tokens  # count_tokens counts what the model would read


def test_the_sdk_streams_a_claude_code_turn(server: RunningServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-local", max_retries=0)
    body = claude_code_body(MODEL, "Say hi.", system_chars=200)
    with client.messages.stream(
        model=MODEL,
        max_tokens=body["max_tokens"],
        system=body["system"],
        messages=body["messages"],
        tools=body["tools"][:2],
        thinking=body["thinking"],
        metadata=body["metadata"],
        extra_body={"context_management": body["context_management"]},
        extra_headers={"anthropic-beta": BETA},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert final.usage.output_tokens > 0


# ---------------------------------------------------------------------- a model whose template thinks

THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("thinker")
    gguf = tmp / "thinker.gguf"
    _with_template(embedded_model_path(), gguf, THINKING_TEMPLATE)
    with running_server("-m", str(gguf), "--no-embeddings", "--alias", "thinker", tmp=tmp) as server:
        yield server


def test_thinking_blocks_from_a_thinking_template(thinker: RunningServer) -> None:
    client = anthropic.Anthropic(base_url=thinker.url, api_key="sk-local", max_retries=0)
    message = client.messages.create(
        model="thinker",
        max_tokens=24,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking and message.content[0].signature
    with client.messages.stream(
        model="thinker",
        max_tokens=24,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
    assert ("content_block_delta", "thinking_delta") in kinds
    assert ("content_block_delta", "signature_delta") in kinds


def test_reasoning_content_from_a_thinking_template(thinker: RunningServer) -> None:
    reply = thinker.client().chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Why?"}], max_tokens=16
    )
    message = reply.choices[0].message
    assert getattr(message, "reasoning_content", None)
    assert "<think>" not in (message.content or "")
    # vLLM's and llama-server's switch turns the template's thinking mode off.
    plain = thinker.client().chat.completions.create(
        model="thinker",
        messages=[{"role": "user", "content": "Why?"}],
        max_tokens=16,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert getattr(plain.choices[0].message, "reasoning_content", None) is None
    assert plain.choices[0].message.content
    assert reply.usage is not None and plain.usage is not None
    assert plain.usage.prompt_tokens < reply.usage.prompt_tokens  # no "<think>" opened
    response = thinker.client().responses.create(model="thinker", input="Why?", max_output_tokens=16)
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary[0].text


def test_a_streamed_thought_is_the_whole_message_in_anthropic_order(thinker: RunningServer) -> None:
    """The thinking block comes first and is signed before it stops; streamed or not, the same prompt and
    the same start of the thought (greedy; a prompt read from the cache may drift later on)."""
    body = claude_code_body("thinker", "Why is the sky blue?", system_chars=300)
    body.update(max_tokens=24, temperature=0, tools=body["tools"][:2])
    whole = _post(thinker, body)
    assert whole.status_code == 200, whole.text
    message = whole.json()
    assert message["content"][0]["type"] == "thinking" and message["content"][0]["signature"]
    assert all(block["type"] != "thinking" for block in message["content"][1:])
    with (
        thinker.http() as http,
        http.stream(
            "POST",
            "/v1/messages?beta=true",
            json={**body, "stream": True},
            headers={"anthropic-version": "2023-06-01", "anthropic-beta": BETA},
        ) as reply,
    ):
        assert reply.status_code == 200
        events = _events(reply)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert events[2][1]["index"] == 0 and events[2][1]["content_block"]["type"] == "thinking"
    first_stop = names.index("content_block_stop")
    kinds = [data["delta"]["type"] for _, data in events[3:first_stop]]
    assert kinds[-1] == "signature_delta" and set(kinds[:-1]) == {"thinking_delta"}
    thought = "".join(data["delta"]["thinking"] for _, data in events[3 : first_stop - 1])
    assert thought[:12] == message["content"][0]["thinking"][:12] and thought.strip()
    # Every later block is a text or tool_use block, opened and closed in turn.
    later = [data["content_block"]["type"] for name, data in events if name == "content_block_start"][1:]
    assert set(later) <= {"text", "tool_use"}
    assert names.count("content_block_start") == names.count("content_block_stop")

    def prompt(usage: dict[str, int]) -> int:
        return usage["input_tokens"] + usage["cache_read_input_tokens"]

    start_usage, end_usage = events[0][1]["message"]["usage"], events[-2][1]["usage"]
    assert prompt(start_usage) == prompt(end_usage) == prompt(message["usage"]) > 0
    assert 0 < end_usage["output_tokens"] <= 24 and 0 < message["usage"]["output_tokens"] <= 24


def test_count_tokens_is_exact_with_thinking_on_and_off(thinker: RunningServer) -> None:
    """The template opens the thinking block only when thinking is on: the count follows it exactly."""
    body = claude_code_body("thinker", "Why is the sky blue?", system_chars=300)
    body.update(max_tokens=8, temperature=0, tools=body["tools"][:3])
    off = {**body, "thinking": {"type": "disabled"}}
    counts = []
    for request in (body, off):
        counted = _post(thinker, request, "/v1/messages/count_tokens?beta=true")
        assert counted.status_code == 200, counted.text
        reply = _post(thinker, request)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert counted.json()["input_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]
        counts.append(counted.json()["input_tokens"])
    assert counts[0] > counts[1]  # "<think>\n" opens the answer when thinking is on
    assert all(block["type"] != "thinking" for block in reply.json()["content"])


# ---------------------------------------------------------------------- through upstreams


@pytest.fixture(scope="module")
def reasoning_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with upstream_gateway(tmp_path_factory.mktemp("reasoning-upstream"), mode="reasoning") as (server, _):
        yield server


def test_upstream_reasoning_content_everywhere(reasoning_upstream: RunningServer) -> None:
    server = reasoning_upstream
    chat = server.client().chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    assert getattr(chat.choices[0].message, "reasoning_content", None) == "".join(REASONING)
    assert chat.choices[0].message.content == "".join(PIECES)
    streamed = server.client().chat.completions.create(
        model="up", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    thoughts = [getattr(c.choices[0].delta, "reasoning_content", None) for c in streamed if c.choices]
    assert "".join(t for t in thoughts if t) == "".join(REASONING)
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-local", max_retries=0)
    body = claude_code_body("up", "hi")
    message = client.messages.create(
        model="up",
        max_tokens=100,
        system=body["system"],
        messages=body["messages"],
        thinking=body["thinking"],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oa:
        events = list(oa.responses.create(model="up", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_claude_code_request_through_an_openai_upstream(tmp_path: Path) -> None:
    upstream = FakeUpstream().start()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[models]]\nname = "up"\naliases = ["{MODEL}"]\n[[models.deployments]]\ntype = "openai"\n'
        f'base_url = "{upstream.url}"\nmodel = "upstream"\n'
    )
    try:
        with running_server("--config", str(config), "--no-embeddings", tmp=tmp_path) as server:
            reply = _post(server, claude_code_body(MODEL, "hi", system_chars=27_000))
            assert reply.status_code == 200, reply.text
            sent = upstream.bodies[-1]
            assert len(sent["tools"]) == 24 and "thinking" not in sent and "context_management" not in sent
            assert "metadata" not in sent and sent["max_tokens"] == 32000
            # The upstream's own refusal (a context overflow, say) reaches Claude Code as it wrote it.
            upstream.mode = "400"
            refused = _post(server, claude_code_body(MODEL, "hi"))
            assert refused.status_code == 400
            assert refused.json()["error"] == {
                "type": "invalid_request_error",
                "message": "fake upstream says 400",
            }
    finally:
        upstream.stop()


# ---------------------------------------------------------------------- through an Anthropic upstream


@pytest.fixture(scope="module")
def claude_upstream(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, FakeAnthropic]]:
    tmp = tmp_path_factory.mktemp("claude-upstream")
    upstream = FakeAnthropic(mode="thinking").start()
    with gateway(tmp, upstream, name="claude-up", kind="anthropic", model="claude-upstream") as server:
        yield server, upstream


def test_claude_code_fields_reach_an_anthropic_upstream(
    claude_upstream: tuple[RunningServer, FakeAnthropic],
) -> None:
    server, upstream = claude_upstream
    body = claude_code_body("claude-up", "hi", system_chars=27_000)
    # An earlier turn's signed thinking block goes back as it came.
    earlier = {"type": "thinking", "thinking": "Earlier.", "signature": fake_anthropic.SIGNATURE}
    body["messages"] += [
        {"role": "assistant", "content": [earlier, {"type": "text", "text": "Hello."}]},
        {"role": "user", "content": "And now?"},
    ]
    for path in ("/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"):
        reply = _post(server, body, path)
        assert reply.status_code == 200, reply.text
        assert upstream.betas[-1] == BETA
        sent = upstream.bodies[-1]
        assert sent["model"] == "claude-upstream"
        for key in ("system", "tools", "thinking", "context_management", "metadata", "messages"):
            assert sent[key] == body[key], key
    message = _post(server, body).json()
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "".join(fake_anthropic.THOUGHTS),
        "signature": fake_anthropic.SIGNATURE,
    }
    # The SDK's beta client, streaming: the betas it names become the header.
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-local", max_retries=0)
    with client.beta.messages.stream(
        model="claude-up",
        max_tokens=1000,
        messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "enabled", "budget_tokens": 500},
        betas=["interleaved-thinking-2025-05-14"],
        extra_body={"context_management": body["context_management"]},
    ) as stream:
        final = stream.get_final_message()
    assert upstream.betas[-1] == "interleaved-thinking-2025-05-14"
    assert upstream.bodies[-1]["context_management"] == body["context_management"]
    assert [b.type for b in final.content] == ["thinking", "text"]


def test_anthropic_thinking_is_reasoning_content_for_openai_clients(
    claude_upstream: tuple[RunningServer, FakeAnthropic],
) -> None:
    server, upstream = claude_upstream
    thoughts, text = "".join(fake_anthropic.THOUGHTS), "".join(fake_anthropic.PIECES)
    hi = [{"role": "user", "content": "hi"}]
    whole = server.client().chat.completions.create(model="claude-up", messages=hi)  # type: ignore[arg-type]
    assert getattr(whole.choices[0].message, "reasoning_content", None) == thoughts
    assert whole.choices[0].message.content == text
    assert upstream.betas[-1] is None  # an OpenAI client names no betas
    chunks = list(server.client().chat.completions.create(model="claude-up", messages=hi, stream=True))  # type: ignore[arg-type]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [getattr(d, "reasoning_content", None) or "" for d in deltas]
    assert "".join(reasoning) == thoughts
    assert "".join(d.content or "" for d in deltas) == text
    last_thought = max(i for i, r in enumerate(reasoning) if r)
    assert all(not d.content for d in deltas[: last_thought + 1])  # reasoning streams before the answer
