"""Anthropic's Messages API through the gateway, both ways, over real HTTP.

Claude clients reach an OpenAI-compatible upstream (``tests/fake_upstream.py``) by translation and an
Anthropic upstream (``tests/fake_anthropic.py``) natively; OpenAI clients reach the Anthropic upstream
by translation. Each scenario has its own model name and upstreams.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

import fake_anthropic
from conftest import RunningServer, free_port, running_server
from fake_anthropic import FakeAnthropic
from fake_upstream import PIECES, FakeUpstream, gateway_config

KEY = "sk-ant-fake-0123456789"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLAUDE_TEXT = "".join(fake_anthropic.PIECES)
ANTHROPIC_UPSTREAMS = (
    "event_error",
    "event_spare",
    "main",
    "tools",
    "first",
    "second",
    "torn",
    "e400",
    "e403",
    "e413",
    "e429",
    "e500",
    "e529",
)


@dataclass
class Gateway:
    server: RunningServer
    claude_up: dict[str, FakeAnthropic]
    openai_up: dict[str, FakeUpstream]

    def claude(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.server.url, api_key="sk-local", max_retries=0, timeout=30.0)

    def openai(self) -> openai.OpenAI:
        return self.server.client(timeout=30.0)


def _anthropic(up: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {"type": "anthropic", "base_url": up.url, "model": "claude-upstream", **extra}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("anthropic-gateway")
    claude_up = {name: FakeAnthropic().start() for name in ANTHROPIC_UPSTREAMS}
    claude_up["tools"].mode = "tools"
    claude_up["first"].mode = "529"
    claude_up["torn"].mode = "torn"
    claude_up["event_error"].mode = "overloaded_event"
    for status in ("400", "403", "413", "429", "500", "529"):
        claude_up[f"e{status}"].mode = status
    openai_up = {"main": FakeUpstream().start(), "tools": FakeUpstream().start()}
    openai_up["tools"].mode = "tools"
    openai_up["tools"].has_tokenize = True
    dead = f"http://127.0.0.1:{free_port()}"
    models = {
        "claude-native": ({}, [_anthropic(claude_up["main"], api_key=KEY, anthropic_version="2023-06-01")]),
        "claude-tools": ({}, [_anthropic(claude_up["tools"])]),
        "claude-failover": (
            {"cooldown": 30.0},
            [
                _anthropic(claude_up["first"]),
                {"type": "anthropic", "base_url": dead, "connect_timeout": 1.0},
                _anthropic(claude_up["second"]),
            ],
        ),
        "claude-torn": ({}, [_anthropic(claude_up["torn"])]),
        "claude-event": ({}, [_anthropic(claude_up["event_error"]), _anthropic(claude_up["event_spare"])]),
        "vllm": ({}, [{"type": "openai", "base_url": openai_up["main"].url, "model": "up-model"}]),
        "vllm-tools": ({}, [{"type": "openai", "base_url": openai_up["tools"].url}]),
        **{
            f"claude-e{s}": ({}, [_anthropic(claude_up[f"e{s}"])])
            for s in ("400", "403", "413", "429", "500", "529")
        },
    }
    config = tmp / "gateway.toml"
    config.write_text(gateway_config(models))
    try:
        with running_server("--config", str(config), tmp=tmp) as server:
            yield Gateway(server, claude_up, openai_up)
    finally:
        for up in (*claude_up.values(), *openai_up.values()):
            up.stop()


# ---------------------------------------------------------------------- Claude clients, native upstream


def test_native_message_passes_through(gw: Gateway) -> None:
    up = gw.claude_up["main"]
    message = gw.claude().messages.create(
        model="claude-native",
        max_tokens=50,
        messages=HI,
        metadata={"user_id": "u-1"},
        extra_body={"vendor": 1},
    )
    assert message.content[0].text == CLAUDE_TEXT  # type: ignore[union-attr]
    assert message.model == "claude-native" and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == fake_anthropic.INPUT_TOKENS
    assert message.usage.cache_read_input_tokens == fake_anthropic.CACHE_READ
    sent = up.bodies[-1]
    assert (
        sent["model"] == "claude-upstream" and sent["vendor"] == 1 and sent["metadata"] == {"user_id": "u-1"}
    )
    assert up.keys[-1] == KEY and up.versions[-1] == "2023-06-01"


def test_native_stream_relays_every_event(gw: Gateway) -> None:
    with gw.claude().messages.stream(model="claude-native", max_tokens=50, messages=HI) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == CLAUDE_TEXT and final.model == "claude-native"  # type: ignore[union-attr]
    with gw.server.http() as http:
        body = {"model": "claude-native", "max_tokens": 5, "messages": HI, "stream": True}
        with http.stream("POST", "/v1/messages", json=body) as r:
            names = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]


def test_native_count_tokens_passes_through(gw: Gateway) -> None:
    count = gw.claude().messages.count_tokens(model="claude-native", messages=HI)  # type: ignore[arg-type]
    assert count.input_tokens == fake_anthropic.INPUT_TOKENS + fake_anthropic.CACHE_READ
    assert gw.claude_up["main"].bodies[-1]["model"] == "claude-upstream"


def test_native_tool_use(gw: Gateway) -> None:
    message = gw.claude().messages.create(
        model="claude-tools",
        max_tokens=50,
        messages=HI,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},  # type: ignore[list-item]
    )
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "tool_use" and message.content[0].input == fake_anthropic.TOOL_INPUT


def test_failover_past_529_and_a_dead_upstream(gw: Gateway) -> None:
    first, second = gw.claude_up["first"], gw.claude_up["second"]
    before = (first.hits, second.hits)
    message = gw.claude().messages.create(model="claude-failover", max_tokens=5, messages=HI)
    assert message.content[0].text == CLAUDE_TEXT  # type: ignore[union-attr]
    assert (first.hits, second.hits) == (before[0] + 1, before[1] + 1)
    # The failed one cools down: the next request goes straight to the healthy one.
    gw.claude().messages.create(model="claude-failover", max_tokens=5, messages=HI)
    assert (first.hits, second.hits) == (before[0] + 1, before[1] + 2)


def test_an_error_event_before_anything_fails_over(gw: Gateway) -> None:
    bad, spare = gw.claude_up["event_error"], gw.claude_up["event_spare"]
    with gw.claude().messages.stream(model="claude-event", max_tokens=5, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == CLAUDE_TEXT  # type: ignore[union-attr]
    assert bad.hits == 1 and spare.hits == 1


def test_a_torn_native_stream_ends_with_an_error_event(gw: Gateway) -> None:
    with gw.server.http() as http:
        body = {"model": "claude-torn", "max_tokens": 5, "messages": HI, "stream": True}
        with http.stream("POST", "/v1/messages", json=body) as r:
            lines = list(r.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error"
    error = json.loads([line for line in lines if line.startswith("data: ")][-1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    ("status", "seen", "kind", "exception"),
    [
        (400, 400, "invalid_request_error", anthropic.BadRequestError),
        # The upstream refused the gateway's own key, not the client's: a gateway failure (502).
        (403, 502, "api_error", anthropic.InternalServerError),
        (413, 413, "request_too_large", anthropic.APIStatusError),
        (429, 429, "rate_limit_error", anthropic.RateLimitError),
        (500, 500, "api_error", anthropic.InternalServerError),
        (529, 529, "overloaded_error", anthropic.APIStatusError),
    ],
)
def test_upstream_error_statuses_reach_claude_clients(
    gw: Gateway, status: int, seen: int, kind: str, exception: type[anthropic.APIStatusError]
) -> None:
    with pytest.raises(exception) as caught:
        gw.claude().messages.create(model=f"claude-e{status}", max_tokens=5, messages=HI)
    assert caught.value.status_code == seen
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == kind  # type: ignore[index]
    if status == 429:
        assert int(caught.value.response.headers["retry-after"]) >= 1


# ---------------------------------------------------------------------- OpenAI clients, Anthropic upstream


def test_openai_chat_by_translation(gw: Gateway) -> None:
    up = gw.claude_up["main"]
    reply = gw.openai().chat.completions.create(
        model="claude-native",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=20,
        stop=["END"],
        temperature=1.5,
        user="u-2",
    )
    assert reply.choices[0].message.content == CLAUDE_TEXT and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == fake_anthropic.INPUT_TOKENS + fake_anthropic.CACHE_READ
    assert reply.usage.prompt_tokens_details.cached_tokens == fake_anthropic.CACHE_READ  # type: ignore[union-attr]
    sent = up.bodies[-1]
    assert sent["system"] == "Be brief." and sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    ]
    assert sent["max_tokens"] == 20 and sent["stop_sequences"] == ["END"] and sent["temperature"] == 1.0
    assert sent["metadata"] == {"user_id": "u-2"} and sent["model"] == "claude-upstream"


def test_openai_stream_by_translation(gw: Gateway) -> None:
    chunks = list(
        gw.openai().chat.completions.create(
            model="claude-native",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == CLAUDE_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(fake_anthropic.PIECES)
    assert gw.claude_up["main"].bodies[-1]["max_tokens"] == 4096  # Anthropic needs one; the default


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_calls_by_translation(gw: Gateway, stream: bool) -> None:
    up = gw.claude_up["tools"]
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}
    ]
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "Rainy"},
        {"role": "user", "content": "And Paris?"},
    ]
    kwargs: dict[str, Any] = {
        "model": "claude-tools",
        "messages": history,
        "tools": tools,
        "tool_choice": "required",
    }
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in gw.openai().chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += call.id or ""
                    entry["name"] += (call.function.name if call.function else None) or ""
                    entry["arguments"] += (call.function.arguments if call.function else None) or ""
        assert finish == "tool_calls"
        (call_dict,) = calls.values()
        name, arguments, call_id = call_dict["name"], call_dict["arguments"], call_dict["id"]
    else:
        reply = gw.openai().chat.completions.create(**kwargs)
        assert reply.choices[0].finish_reason == "tool_calls"
        (tool_call,) = reply.choices[0].message.tool_calls or []
        name, arguments, call_id = tool_call.function.name, tool_call.function.arguments, tool_call.id  # type: ignore[union-attr]
    assert (
        name == "get_weather"
        and json.loads(arguments) == fake_anthropic.TOOL_INPUT
        and call_id == "toolu_fake1"
    )
    sent = up.bodies[-1]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "user"]  # the tool result joins the next user turn
    assert sent["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "toolu_a",
        "name": "get_weather",
        "input": {"city": "Rome"},
    }
    assert sent["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_a",
        "content": "Rainy",
    }


def test_openai_errors_from_an_anthropic_upstream_keep_openai_envelope(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().chat.completions.create(model="claude-e400", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 400 and "fake anthropic says 400" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as refused:
        gw.openai().chat.completions.create(model="claude-e403", messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code == 502 and "(403)" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        gw.openai().completions.create(model="claude-native", prompt="Hi")


def test_embeddings_from_an_anthropic_upstream_are_a_400(gw: Gateway) -> None:
    hits = gw.claude_up["main"].hits
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().embeddings.create(model="claude-native", input="Hi")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert gw.claude_up["main"].hits == hits  # nothing was sent


# ---------------------------------------------------------------------- Claude clients, OpenAI upstream


def test_claude_client_reaches_an_openai_upstream(gw: Gateway) -> None:
    up = gw.openai_up["main"]
    message = gw.claude().messages.create(
        model="vllm",
        max_tokens=30,
        system="Be brief.",
        messages=HI,
        stop_sequences=["END"],
        extra_body={"top_k": 5},
    )
    assert message.content[0].text == "".join(PIECES) and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert message.usage.input_tokens == 11 - 4 and message.usage.cache_read_input_tokens == 4
    sent = up.bodies[-1]
    assert (
        sent["model"] == "up-model"
        and sent["max_tokens"] == 30
        and sent["stop"] == ["END"]
        and sent["top_k"] == 5
    )
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]


def test_claude_stream_from_an_openai_upstream(gw: Gateway) -> None:
    with gw.claude().messages.stream(model="vllm", max_tokens=30, messages=HI) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == "".join(PIECES)  # type: ignore[union-attr]
    assert final.usage.output_tokens == len(PIECES) and final.usage.cache_read_input_tokens == 4
    assert gw.openai_up["main"].bodies[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_claude_tool_use_from_an_openai_upstream(gw: Gateway, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": "vllm-tools",
        "max_tokens": 30,
        "messages": HI,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    if stream:
        with gw.claude().messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = gw.claude().messages.create(**kwargs)
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather" and use.input == {"city": "Paris"}
    sent = gw.openai_up["tools"].bodies[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_count_tokens_through_vllms_tokenize(gw: Gateway) -> None:
    up = gw.openai_up["tools"]
    count = gw.claude().messages.count_tokens(
        model="vllm-tools", system="S", messages=HI, tools=[WEATHER_TOOL]
    )  # type: ignore[arg-type,list-item]
    message = gw.claude().messages.create(model="vllm-tools", max_tokens=5, messages=HI)
    assert count.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    sent = up.bodies[-2]
    assert sent["model"] == "vllm-tools" and sent["add_generation_prompt"] is True
    assert sent["messages"][0] == {"role": "system", "content": "S"}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_count_tokens_without_a_tokenizer_is_a_clear_400(gw: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        gw.claude().messages.count_tokens(model="vllm", messages=HI)  # type: ignore[arg-type]
    assert "/tokenize" in caught.value.message
