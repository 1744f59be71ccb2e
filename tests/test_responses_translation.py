"""Responses requests as chat completions, and thinking text split off answers: pure functions."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from interference.api.responses_output import ResponseBuilder
from interference.protocol import ParamError, ResponseRequest
from interference.protocol.responses_chat import chat_body, custom_input, group_items, tool_call_item
from interference.providers.reasoning import ReasoningSplitter

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
    {
        "type": "custom",
        "name": "patch",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /x/"},
    },
    {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g"}]},
    {"type": "web_search"},
]


NS_G = {"name": "ns__g"}
D = "done"


def _request(**fields: Any) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "m", "input": "hi", **fields})


def test_tools_are_flattened_and_hosted_ones_dropped() -> None:
    plan = chat_body(_request(tools=TOOLS), _request().items, stream=False)
    names = [t["function"]["name"] for t in plan.body["tools"]]
    assert names == ["f", "patch", "ns__g"] and plan.dropped_tools == ["web_search"]
    assert plan.body["tools"][0]["function"]["strict"] is True
    assert "start: /x/" in plan.body["tools"][1]["function"]["description"]
    assert plan.names["ns__g"].namespace == "ns" and plan.names["patch"].kind == "custom"


@pytest.mark.parametrize(
    ("choice", "expected", "offered"),
    [
        ("required", "required", 3),
        ({"type": "function", "name": "g", "namespace": "ns"}, {"type": "function", "function": NS_G}, 3),
        ({"type": "custom", "name": "patch"}, {"type": "function", "function": {"name": "patch"}}, 3),
        ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]}, "auto", 1),
        ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "zz"}]}, None, 0),
        ({"type": "web_search"}, None, 3),
    ],
)  # fmt: skip
def test_tool_choice(choice: Any, expected: Any, offered: int) -> None:
    plan = chat_body(_request(tools=TOOLS, tool_choice=choice), _request().items, stream=True)
    assert plan.body.get("tool_choice") == expected
    assert len(plan.body.get("tools", [])) == offered
    assert plan.body["stream_options"] == {"include_usage": True}


def test_bad_tool_choices() -> None:
    with pytest.raises(ParamError):
        chat_body(_request(tools=TOOLS, tool_choice={"type": "function", "name": "nope"}), [], stream=False)
    bad = {"type": "allowed_tools", "mode": "sometimes", "tools": [{"type": "function", "name": "f"}]}
    with pytest.raises(ParamError):
        chat_body(_request(tools=TOOLS, tool_choice=bad), _request().items, stream=False)


def test_items_become_messages() -> None:
    items = [
        {"type": "message", "id": "m1", "role": "user", "content": [
            {"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "http://x/i.png"},
        ]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "call_id": "c1", "name": "g", "namespace": "ns", "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "patch", "input": "diff"},
        {"type": "reasoning", "summary": []},
        {"type": "web_search_call", "id": "ws"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": D}]},
        {"type": "item_reference", "id": "m1"},
    ]  # fmt: skip
    request = _request(
        input=items, instructions="rules", text={"format": {"type": "json_object"}}, top_logprobs=2
    )
    plan = chat_body(request, request.items, stream=False)
    messages = plan.body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": "http://x/i.png"}}
    calls = messages[2]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["ns__g", "patch"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"input": "diff"}
    assert messages[4]["content"] == D and plan.dropped_items == 2
    assert plan.body["response_format"] == {"type": "json_object"} and plan.body["logprobs"] is True
    assert [len(g) for g in group_items(request.items)] == [1, 1, 2, 2, 1, 1, 1]


def test_translation_refusals() -> None:
    for items in (
        [{"type": "item_reference", "id": "missing"}],
        [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
        [{"role": "user", "content": [{"type": "input_file"}]}],
        [{"type": "reasoning", "summary": []}],
    ):
        request = _request(input=items)
        with pytest.raises(ParamError):
            chat_body(request, request.items, stream=False)
    schema = {"type": "json_schema", "name": "out", "schema": {"type": "object"}}
    request = _request(text={"format": schema})
    assert (
        chat_body(request, request.items, stream=False).body["response_format"]["json_schema"]["name"]
        == "out"
    )


def test_calls_map_back() -> None:
    request = _request(tools=TOOLS)
    names = chat_body(request, request.items, stream=False).names
    item = tool_call_item(
        {"id": "c", "function": {"name": "ns__g", "arguments": "{}"}}, names, item_id="fc_1"
    )
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", "g", "ns")
    item = tool_call_item(
        {"id": "c", "function": {"name": "patch", "arguments": '{"input": "x"}'}}, names, item_id="fc"
    )
    assert (item["type"], item["input"]) == ("custom_tool_call", "x")
    assert custom_input("not json") == "not json" and custom_input('{"other": 1}') == '{"other": 1}'


@pytest.mark.parametrize(
    ("pieces", "opened", "reasoning", "answer"),
    [
        (["<thi", "nk>plan", "ning</th", "ink>\n\nHello"], False, "planning", "Hello"),
        (["plan</think>", "ok"], True, "plan", "ok"),
        (["Hello", " there"], False, "", "Hello there"),
        (["  <think>a", "b"], False, "ab", ""),
        (["<", "p>"], False, "", "<p>"),
    ],
)
def test_reasoning_splitter(pieces: list[str], opened: bool, reasoning: str, answer: str) -> None:
    splitter = ReasoningSplitter(opened=opened)
    thought, said = [], []
    for i, piece in enumerate(pieces):
        r, a = splitter.feed(piece, final=i == len(pieces) - 1)
        thought.append(r)
        said.append(a)
    assert ("".join(thought), "".join(said)) == (reasoning, answer)


def test_every_envelope_echoes_the_requests_instructions_and_tools() -> None:
    # Written once and repeated: the same JSON as the request's own fields, in each envelope.
    tools = [
        {"type": "function", "name": "shell", "description": "Run — a command ✓", "parameters": {}},
        {"type": "custom", "name": "apply_patch", "description": "Edit files."},
    ]
    request = ResponseRequest.model_validate(
        {"model": "m", "input": "hi", "instructions": "Be brief. ✓", "tools": tools}
    )
    builder = ResponseBuilder(request, {}, previous_id=None)
    for envelope in (builder.envelope("in_progress", None), builder.envelope("completed", None)):
        echoed = orjson.loads(orjson.dumps(envelope))
        assert echoed["instructions"] == "Be brief. ✓"
        assert echoed["tools"] == [t.model_dump(exclude_none=True) for t in request.tools or []]
        assert [t["name"] for t in echoed["tools"]] == ["shell", "apply_patch"]
    bare_request = ResponseRequest.model_validate({"model": "m", "input": "hi"})
    bare = ResponseBuilder(bare_request, {}, previous_id=None)
    echoed = orjson.loads(orjson.dumps(bare.envelope("completed", None)))
    assert echoed["instructions"] is None and echoed["tools"] == []


def test_the_tools_echo_is_the_dump_of_the_models_whether_or_not_the_sent_objects_are_kept() -> None:
    """A response repeats the request's tools: the objects as sent, null fields left out (a namespace's
    tools' too, a schema's own nulls kept), equal to the models' dump that is the fallback."""
    tools = [
        *TOOLS,
        {"type": "function", "name": "n", "description": None, "strict": None,
         "parameters": {"type": "object", "properties": {"a": {"default": None}}}},
        {"type": "namespace", "name": "ns2", "description": None,
         "tools": [{"type": "custom", "name": "c", "format": None, "extra": None}]},
    ]  # fmt: skip
    body = {"model": "m", "input": "hi", "tools": tools}
    dumped = [tool.model_dump(exclude_none=True) for tool in ResponseRequest.model_validate(body).tools or ()]
    kept = ResponseRequest.model_validate(body)
    kept.set_wire_body(body)
    assert kept.tools_echo() == dumped
    assert kept.tools_echo()[4] == {
        "type": "function",
        "name": "n",
        "parameters": {"type": "object", "properties": {"a": {"default": None}}},
    }
    assert body["tools"][4]["description"] is None  # the sent objects are left as they were
    from_bytes = ResponseRequest.model_validate_json(orjson.dumps(body))
    from_bytes.set_wire_body(orjson.dumps(body))
    assert from_bytes.tools_echo() == dumped
    assert ResponseRequest.model_validate({"model": "m", "input": "hi"}).tools_echo() == []
