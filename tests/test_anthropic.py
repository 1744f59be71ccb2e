"""Anthropic's Messages API on the local engine, through the official anthropic SDK and raw HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from conftest import RunningServer, running_server

MODEL = "claude-sonnet-4-5"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
GREEDY = {"temperature": 0}  # the SDK no longer has sampling keywords; they go in the body


def _sdk(server: RunningServer, **kwargs: Any) -> anthropic.Anthropic:
    options: dict[str, Any] = {"api_key": "sk-local", "max_retries": 0, "timeout": 120.0, **kwargs}
    return anthropic.Anthropic(base_url=server.url, **options)


@pytest.fixture(scope="module")
def claude(server: RunningServer) -> anthropic.Anthropic:
    return _sdk(server)


def _events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event; the name must match the data's type."""
    out, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == name
            out.append((name, data))
    return out


# ---------------------------------------------------------------------- messages


def test_message_shape(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=16, messages=HI, system="Be brief.")
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    usage = message.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens is not None


def test_max_tokens_is_the_stop_reason_when_it_cuts(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Write a long story."}]
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stream_events_in_anthropic_order(server: RunningServer) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": HI, "stream": True}
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "whatever-2025-01-01"}
    with (
        server.http() as http,
        http.stream("POST", "/v1/messages?beta=true", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names[2] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] > 0
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    final = events[-2][1]
    assert final["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert final["usage"]["output_tokens"] <= 8


def test_stream_through_the_sdk_matches_the_whole_message(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 12, "messages": HI, "extra_body": GREEDY}
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert streamed.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert streamed.stop_reason == whole.stop_reason
    total = streamed.usage.input_tokens + (streamed.usage.cache_read_input_tokens or 0)
    assert total == whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0)
    assert streamed.usage.output_tokens == whole.usage.output_tokens


def test_root_path_answers_too(server: RunningServer) -> None:
    with server.http() as http:
        r = http.post("/messages", json={"model": MODEL, "max_tokens": 4, "messages": HI})
    assert r.status_code == 200 and r.json()["type"] == "message"


def test_stop_sequences_report_the_one_matched(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": HI, "extra_body": GREEDY}
    free = claude.messages.create(max_tokens=24, **kwargs).content[0].text  # type: ignore[union-attr]
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]
    message = claude.messages.create(max_tokens=24, stop_sequences=["\u00a7never\u00a7", stop], **kwargs)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    text = message.content[0].text  # type: ignore[union-attr]
    assert stop not in text and free.startswith(text)
    with claude.messages.stream(max_tokens=24, stop_sequences=[stop], **kwargs) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == stop


def test_tool_round_trip(claude: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(
        model=MODEL,
        max_tokens=128,
        extra_body=GREEDY,
        messages=ask,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert isinstance(use.input, dict) and isinstance(use.input.get("city"), str)
    result = {
        "type": "tool_result",
        "tool_use_id": use.id,
        "content": [{"type": "text", "text": "Sunny, 21 C"}],
    }
    second = claude.messages.create(
        model=MODEL,
        max_tokens=24,
        messages=[
            *ask,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "none"},
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]


def test_streamed_tool_use_sends_partial_json(server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 128,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    with server.http() as http, http.stream("POST", "/v1/messages", json=body) as r:
        events = _events(r)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts and starts[-1]["type"] == "tool_use" and starts[-1]["id"].startswith("toolu_")
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert isinstance(json.loads(partial)["city"], str)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_disconnect_frees_the_slot(server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story."}],
    }
    with server.http() as http, http.stream("POST", "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if "content_block_delta" in line:
                break
    _wait_for(lambda: server.metrics()["interference_engine_slots_active"] == 0)


# ---------------------------------------------------------------------- count_tokens


@pytest.mark.parametrize("with_tools", [False, True])
def test_count_tokens_equals_the_next_calls_input(claude: anthropic.Anthropic, with_tools: bool) -> None:
    extra: dict[str, Any] = {"system": "You are terse."}
    if with_tools:
        extra["tools"] = [WEATHER_TOOL]
    count = claude.messages.count_tokens(model=MODEL, messages=HI, **extra).input_tokens  # type: ignore[arg-type]
    message = claude.messages.create(model=MODEL, max_tokens=4, messages=HI, **extra)  # type: ignore[arg-type]
    assert count == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    # Asked again, most of the prompt comes from the cache; the sum is the same.
    again = claude.messages.create(model=MODEL, max_tokens=4, messages=HI, **extra)  # type: ignore[arg-type]
    assert (again.usage.cache_read_input_tokens or 0) > 0
    assert count == again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0)


def test_count_tokens_grows_with_tools_and_system(claude: anthropic.Anthropic) -> None:
    def count(**extra: Any) -> int:
        return claude.messages.count_tokens(model=MODEL, messages=HI, **extra).input_tokens  # type: ignore[arg-type]

    short, long = count(system="Be brief."), count(system="Be brief. " * 20)
    assert short < long
    assert count(system="Be brief.", tools=[WEATHER_TOOL]) > short


# ---------------------------------------------------------------------- models


def test_models_in_anthropic_shape(claude: anthropic.Anthropic, server: RunningServer) -> None:
    models = list(claude.models.list())
    ids = [m.id for m in models]
    assert {"claude-sonnet-4-5", "claude-haiku-4-5-20251001", "gpt-4o"} <= set(ids)
    assert all(m.type == "model" and m.display_name and m.created_at for m in models)
    with server.http() as http:
        page = http.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
        plain = http.get("/v1/models").json()
    assert page["has_more"] is False and page["first_id"] == ids[0] and page["last_id"] == ids[-1]
    assert plain["object"] == "list" and "has_more" not in plain  # OpenAI clients keep OpenAI's shape
    assert claude.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"


# ---------------------------------------------------------------------- errors


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


def test_bad_requests_are_400_in_anthropic_envelope(server: RunningServer) -> None:
    with server.http() as http:
        missing = http.post("/v1/messages", json={"model": MODEL, "messages": HI})
        assert "max_tokens" in _error(missing, 400, "invalid_request_error")
        wrong = http.post("/v1/messages", json={"model": MODEL, "max_tokens": "many", "messages": HI})
        _error(wrong, 400, "invalid_request_error")
        broken = http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
        _error(broken, 400, "invalid_request_error")
        role = http.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "tool", "content": "x"}]},
        )
        _error(role, 400, "invalid_request_error")
        thinking = {"type": "enabled", "budget_tokens": "lots"}
        think = http.post(
            "/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": HI, "thinking": thinking}
        )
        assert "thinking" in _error(think, 400, "invalid_request_error")
        image = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        }
        pic = http.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [image]}]},
        )
        assert "image" in _error(pic, 400, "invalid_request_error")
        count = http.post("/v1/messages/count_tokens", json={"model": MODEL})
        _error(count, 400, "invalid_request_error")
        # A block whose type is no string, in the system prompt and in a message.
        for block in ({"type": {}}, {"type": ["text"], "text": "x"}):
            system = {"model": MODEL, "messages": HI, "system": [block]}
            _error(http.post("/v1/messages/count_tokens", json=system), 400, "invalid_request_error")
            turn = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [block]}]}
            _error(http.post("/v1/messages", json=turn), 400, "invalid_request_error")
        # The OpenAI routes keep OpenAI's envelope.
        openai_style = http.post("/v1/chat/completions", json={"model": MODEL})
        assert openai_style.status_code == 400 and "type" in openai_style.json()["error"]


def test_sdk_raises_its_own_error_classes(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x" * 40_000}]
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a key and room for one request at a time: for 401 and 429."""
    tmp = tmp_path_factory.mktemp("anthropic-guarded")
    with running_server("--api-key", "sk-right", "-np", "1", "--max-queue", "0", tmp=tmp) as s:
        yield s


def test_auth_takes_x_api_key_and_bearer(guarded: RunningServer) -> None:
    message = _sdk(guarded, api_key="sk-right").messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert message.type == "message"
    bearer = _sdk(guarded, api_key=None, auth_token="sk-right").messages.create(
        model=MODEL, max_tokens=2, messages=HI
    )
    assert bearer.type == "message"
    with pytest.raises(anthropic.AuthenticationError) as refused:
        _sdk(guarded, api_key="sk-wrong").messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert refused.value.status_code == 401
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with guarded.http() as http:
        _error(http.post("/v1/messages/count_tokens", json={}), 401, "authentication_error")
        openai_style = http.post("/v1/chat/completions", json={})
        assert openai_style.status_code == 401 and openai_style.json()["error"]["code"] == "invalid_api_key"


def test_full_server_is_429_with_retry_after(guarded: RunningServer) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell a long story."}],
    }
    headers = {"x-api-key": "sk-right"}
    started = threading.Event()
    with guarded.http() as http, http.stream("POST", "/v1/messages", json=body, headers=headers) as busy:
        lines = busy.iter_lines()
        for line in lines:
            if "content_block_delta" in line:
                started.set()
                break
        assert started.is_set()
        second = http.post("/v1/messages", json={**body, "stream": False}, headers=headers)
        _error(second, 429, "rate_limit_error")
        assert int(second.headers["retry-after"]) >= 1
