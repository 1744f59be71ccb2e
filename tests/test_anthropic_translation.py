"""The pure Anthropic <-> OpenAI translation functions, and the stop matcher's report."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from interference.engine.detok import StopMatcher
from interference.protocol import ChatCompletionRequest, MessagesRequest, ParamError
from interference.protocol.anthropic_openai import (
    EventTranslator,
    chat_choice,
    chat_request,
    messages_body,
    stop_reason,
)

TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}


def _messages(**body: Any) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 8, **body})


def test_blocks_become_chat_messages() -> None:
    request = _messages(
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "2"}],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "bad", "is_error": True},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["X"],
        top_k=3,
        metadata={"user_id": "u"},
        stream=True,
    )
    body = chat_request(request)
    assert body["messages"] == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "2"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: bad"},
        {"role": "user", "content": "thanks"},
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["parameters"] == TOOL["input_schema"]
    assert body["stop"] == ["X"] and body["top_k"] == 3 and body["user"] == "u" and body["max_tokens"] == 8
    assert body["stream_options"] == {"include_usage": True}
    ChatCompletionRequest.model_validate(body)


def test_named_tool_choice_and_server_tools() -> None:
    named = chat_request(
        _messages(
            messages=[{"role": "user", "content": "x"}],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "f"},
        )
    )
    assert named["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    server_tool = _messages(
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    with pytest.raises(ParamError) as caught:
        chat_request(server_tool)
    assert caught.value.param == "tools[0]"


def test_bad_blocks_and_choices_are_rejected() -> None:
    with pytest.raises(ValidationError):
        _messages(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])
    with pytest.raises(ValidationError):
        _messages(
            messages=[{"role": "user", "content": "x"}],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "g"},
        )
    # Unknown block types are kept (an Anthropic upstream may know them) but cannot become chat.
    request = _messages(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}])
    with pytest.raises(ParamError):
        chat_request(request)


@pytest.mark.parametrize(
    ("finish", "sequence", "expected"),
    [
        ("stop", None, "end_turn"),
        ("stop", "X", "stop_sequence"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
    ],
)
def test_stop_reasons(finish: str, sequence: str | None, expected: str) -> None:
    assert stop_reason(finish, sequence) == expected


def test_chat_becomes_a_messages_body() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "public",
            "messages": [
                {"role": "system", "content": "S"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
            ],
            "temperature": 2.0,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
        }
    )
    body = messages_body(request, model="up")
    assert (
        body["model"] == "up"
        and body["system"] == "S"
        and body["temperature"] == 1.0
        and body["max_tokens"] == 4096
    )
    assert body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "r"}],
    }
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    with pytest.raises(ParamError):
        messages_body(request.model_copy(update={"n": 2}), model="up")


def test_anthropic_answers_become_chat() -> None:
    whole = {
        "content": [
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}},
        ],
        "stop_reason": "tool_use",
    }
    choice = chat_choice(whole)
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "a"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":1}'}
    translator = EventTranslator()
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 2}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"x"'},
        },
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    out = [c for e in events for c in translator.feed(e)]
    assert out[1]["delta"]["tool_calls"][0]["id"] == "toolu_1"
    assert out[2]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"x"'
    assert out[-1]["finish_reason"] == "length" and translator.done
    assert translator.usage == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def test_stop_matcher_reports_the_first_match() -> None:
    matcher = StopMatcher(["lo", "el"])
    assert matcher.feed("H") == "H"
    assert matcher.feed("ello") == ""
    assert matcher.stopped and matcher.matched == "el"
    assert StopMatcher(["zz"]).matched is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_each_status_has_anthropic_s_error_type(status: int, kind: str) -> None:
    from interference.api.errors import anthropic_error_body
    from interference.errors import InterferenceError

    exc = InterferenceError("no")
    exc.status = status
    assert anthropic_error_body(exc) == {"type": "error", "error": {"type": kind, "message": "no"}}
