"""The Responses API as agents use it: tools and tool calls, stored state, truncation.

On the embedded model (calls made mandatory, so their arguments are grammar-constrained and parse)
and through a scripted OpenAI-compatible upstream (what the upstream receives is checked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import RunningServer, running_server
from fake_upstream import FakeUpstream, upstream_gateway

MODEL = "gpt-4o"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to the work tree"}
AGENTS = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Helpers",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "parameters": {
                "type": "object",
                "properties": {"role": {"type": "string", "enum": ["explorer", "reviewer"]}},
                "required": ["role"],
            },
        }
    ],
}
HOSTED = {"type": "web_search", "external_web_access": False}
TOOLS = [WEATHER, PATCH, AGENTS, HOSTED]


def _kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


# ---------------------------------------------------------------------- the local engine


def test_required_call_is_a_function_call_item(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=80,
        temperature=0,
    )
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id and calls[0].id.startswith("fc_")
    assert [t.name for t in response.tools if t.type == "function"] == ["get_weather"]


def test_namespaced_call_comes_back_under_its_own_name(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Start a helper.",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "spawn_agent", "namespace": "multi_agent_v1"},
        temperature=0,
        max_output_tokens=80,
    )
    call = response.output[0]
    assert call.type == "function_call"
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")
    assert json.loads(call.arguments)["role"] in ("explorer", "reviewer")


def test_custom_tool_call_item(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Patch it.",
        tools=TOOLS,
        tool_choice={"type": "custom", "name": "apply_patch"},
        temperature=0,
        max_output_tokens=300,
    )
    call = response.output[0]
    if response.status == "incomplete":  # the tiny model's input string ran to max_output_tokens
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        return
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    assert isinstance(call.input, str)


CD_REGEX = r"cd [a-z]{1,8}(/[a-z]{1,8}){0,2}"
CD = {
    "type": "custom",
    "name": "change_dir",
    "description": "Change directory",
    "format": {"type": "grammar", "syntax": "regex", "definition": CD_REGEX},
}
LIST_LARK = r"""start: "ls" (" -" FLAG~1..3)? " " PATH
FLAG: "a" | "l" | "h"
PATH: /[a-z.]{1,10}/
"""
LS = {
    "type": "custom",
    "name": "list_files",
    "description": "List files",
    "format": {"type": "grammar", "syntax": "lark", "definition": LIST_LARK},
}


@pytest.mark.parametrize("seed", [1])
def test_custom_tool_formats_are_enforced(client: openai.OpenAI, seed: int) -> None:
    import lark

    for tool, check in (
        (CD, lambda text: re.fullmatch(CD_REGEX, text) is not None),
        (LS, lambda text: bool(lark.Lark(LIST_LARK).parse(text))),
    ):
        response = client.responses.create(
            model=MODEL,
            input="Go ahead.",
            tools=[tool],
            tool_choice={"type": "custom", "name": tool["name"]},
            temperature=1.0,
            extra_body={"seed": seed},
            max_output_tokens=120,
        )
        assert response.status == "completed"
        call = response.output[0]
        assert call.type == "custom_tool_call" and call.name == tool["name"]
        assert check(call.input), call.input


def test_a_format_llama_cpp_refuses_is_left_unenforced(client: openai.OpenAI) -> None:
    """Left recursion reads as Lark but llama.cpp takes no such grammar: the call still goes ahead."""
    looping = {**LS, "format": {"type": "grammar", "syntax": "lark", "definition": 'start: start "a" | "a"'}}
    response = client.responses.create(
        model=MODEL,
        input="Go ahead.",
        tools=[looping],
        tool_choice={"type": "custom", "name": "list_files"},
        temperature=0,
        max_output_tokens=120,
    )
    if response.status == "incomplete":  # the free input string ran to max_output_tokens
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        return
    assert response.output[0].type == "custom_tool_call"
    assert response.output[0].name == "list_files"


STRICT_CITY = {
    **WEATHER,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("seed", [3, 4])
def test_optional_calls_to_strict_tools_follow_their_schemas(client: openai.OpenAI, seed: int) -> None:
    """With tool_choice auto the answer is text or calls; a call's arguments (or input) always fit."""
    import jsonschema

    response = client.responses.create(
        model=MODEL,
        input="Use get_weather for Paris, or change_dir to go to src.",
        tools=[STRICT_CITY, CD],
        temperature=1.0,
        extra_body={"seed": seed},
        max_output_tokens=64,
    )
    assert response.status in ("completed", "incomplete")
    for item in response.output:
        if item.type == "function_call":
            jsonschema.validate(json.loads(item.arguments), STRICT_CITY["parameters"])
        elif item.type == "custom_tool_call":
            assert re.fullmatch(CD_REGEX, item.input), item.input
        else:
            assert item.type == "message"
            assert "<tool_call>" not in item.content[0].text


def test_hosted_tools_are_left_out_and_named(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "hi", "tools": TOOLS, "max_output_tokens": 4}
    with server.http() as http:
        reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-interference-dropped-tools"] == "web_search"
    assert [t["type"] for t in reply.json()["tools"]] == ["function", "custom", "namespace", "web_search"]


def test_streamed_call_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input="Weather in Paris?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=80,
            stream=True,
        )
    )
    kinds = _kinds(events)
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = events[-3]
    assert done.arguments == deltas and json.loads(deltas)
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].arguments == deltas


def test_tool_loop_and_stored_chain(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # one call object: it always fits in max_output_tokens
        max_output_tokens=120,
        temperature=0,
    )
    assert first.status == "completed", first.incomplete_details
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21 C"} for c in calls]
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=outputs,  # type: ignore[arg-type]
        tools=[WEATHER],
        max_output_tokens=16,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn is in the prompt
    listed = client.responses.input_items.list(second.id, order="asc")
    kinds = ["message"] + ["function_call"] * len(calls) + ["function_call_output"] * len(calls)
    assert [item.type for item in listed.data] == kinds


def test_truncation(tmp_path: Path) -> None:
    history: list[dict[str, Any]] = [{"role": "developer", "content": "Answer briefly."}]
    for i in range(12):
        history.append({"role": "user", "content": f"Fact {i}: " + "lorem ipsum dolor sit amet " * 20})
        history.append({"role": "assistant", "content": "Noted."})
    history.append({"role": "user", "content": "Say ok."})
    # A small context, so that the history overflows it without a long prefill.
    with running_server("--ctx-size", "1024", "--parallel", "1", "--no-embeddings", tmp=tmp_path) as server:
        client = server.client()
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model=MODEL, input=history, max_output_tokens=4)  # type: ignore[arg-type]
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "context_length_exceeded"
        kept = client.responses.create(
            model=MODEL,
            input=history,  # type: ignore[arg-type]
            truncation="auto",
            max_output_tokens=4,
            store=False,
        )
        assert kept.status in ("completed", "incomplete") and kept.truncation == "auto"
        assert kept.usage is not None and 300 < kept.usage.input_tokens < 1024


# ---------------------------------------------------------------------- stored responses


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="hi", previous_response_id=response.id)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "previous_response_id"


def test_get_delete_and_input_items(client: openai.OpenAI, server: RunningServer) -> None:
    items = [{"role": "user", "content": f"line {i}"} for i in range(5)]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=2)  # type: ignore[arg-type]
    assert client.responses.retrieve(response.id).id == response.id
    page = client.responses.input_items.list(response.id, limit=2, order="asc")
    assert len(page.data) == 2 and page.has_more
    rest = client.responses.input_items.list(response.id, limit=10, order="asc", after=page.data[-1].id)
    texts = [item.content[0].text for item in [*page.data, *rest.data]]  # type: ignore[union-attr]
    assert texts == [f"line {i}" for i in range(5)] and not rest.has_more
    newest = client.responses.input_items.list(response.id, limit=1)
    assert newest.data[0].content[0].text == "line 4"  # type: ignore[union-attr]
    with server.http() as http:
        assert http.get(f"/v1/responses/{response.id}/input_items?limit=0").status_code == 400
        assert http.get(f"/v1/responses/{response.id}/input_items?order=up").status_code == 400
    deleted = client.responses.delete(response.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_instructions_are_not_carried_over(tmp_path: Path) -> None:
    with upstream_gateway(tmp_path) as (server, upstream):
        client = server.client()
        first = client.responses.create(model="up", input="Turn one.", instructions="Old rules.")
        client.responses.create(
            model="up", input="Turn two.", instructions="New rules.", previous_response_id=first.id
        )
        sent = upstream.bodies[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "New rules."}
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
        # Stored input comes back as parts; the new input is sent as it came.
        assert sent[1]["content"] in ("Turn one.", [{"type": "text", "text": "Turn one."}])
        assert sent[3]["content"] == "Turn two."
        assert all(m.get("content") != "Old rules." for m in sent)


def test_owner_only_and_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "responses.db"
    args = ("--api-key", "key-a", "--api-key", "key-b", "--responses-db", str(db))
    with running_server(*args, tmp=tmp_path) as server:
        a = openai.OpenAI(base_url=f"{server.url}/v1", api_key="key-a", max_retries=0)
        b = openai.OpenAI(base_url=f"{server.url}/v1", api_key="key-b", max_retries=0)
        made = a.responses.create(model=MODEL, input="hi", max_output_tokens=2)
        for attempt in (
            lambda: b.responses.retrieve(made.id),
            lambda: b.responses.delete(made.id),
            lambda: b.responses.input_items.list(made.id),
            lambda: b.responses.create(model=MODEL, input="hi", previous_response_id=made.id),
        ):
            with pytest.raises(openai.NotFoundError):
                attempt()
    with running_server(*args, tmp=tmp_path) as server:
        a = openai.OpenAI(base_url=f"{server.url}/v1", api_key="key-a", max_retries=0)
        assert a.responses.retrieve(made.id).id == made.id


def test_store_bounds(tmp_path: Path) -> None:
    db = tmp_path / "responses.db"
    with running_server("--responses-db", str(db), "--responses-max-count", "2", tmp=tmp_path) as server:
        client = server.client()
        ids = [client.responses.create(model=MODEL, input=f"n {i}", max_output_tokens=1).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])  # the oldest went first
        assert [client.responses.retrieve(i).id for i in ids[1:]] == ids[1:]
    with running_server("--responses-db", str(db), "--responses-max-age", "0.5", tmp=tmp_path) as server:
        client = server.client()
        made = client.responses.create(model=MODEL, input="hi", max_output_tokens=1)
        import time

        time.sleep(1.0)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)
    with running_server("--responses-db", str(db), "--responses-max-mib", "0.001", tmp=tmp_path) as server:
        client = server.client()
        made = client.responses.create(model=MODEL, input="x" * 2000, max_output_tokens=1)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)  # larger than the whole store: not kept


# ---------------------------------------------------------------------- through an upstream


@pytest.fixture(scope="module")
def tool_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, FakeUpstream]]:
    with upstream_gateway(tmp_path_factory.mktemp("responses-tools"), mode="tools") as gateway:
        yield gateway


def test_upstream_tool_calls_and_outputs(tool_gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, upstream = tool_gateway
    client = server.client()
    response = client.responses.create(model="up", input="Weather?", tools=TOOLS, parallel_tool_calls=False)
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    sent = upstream.bodies[-1]
    names = [t["function"]["name"] for t in sent["tools"]]
    assert names == ["get_weather", "apply_patch", "multi_agent_v1__spawn_agent"]
    assert sent["parallel_tool_calls"] is False
    client.responses.create(
        model="up",
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            call.model_dump(exclude_none=True),
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** patch"},
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": [{"type": "input_text", "text": "21 C"}],
            },
            {"type": "custom_tool_call_output", "call_id": "c2", "output": "applied"},
        ],
        tools=TOOLS,
        store=False,
    )
    messages = upstream.bodies[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    calls = messages[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "apply_patch"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"input": "*** patch"}
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "21 C"}


def test_upstream_streamed_arguments(tool_gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, _ = tool_gateway
    with server.client().responses.stream(model="up", input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas == ['{"city": ', '"Paris"}']
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == '{"city": "Paris"}'


def test_tool_choice_allowed_tools(tool_gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, upstream = tool_gateway
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    body = {"model": "up", "input": "hi", "tools": TOOLS, "tool_choice": choice, "store": False}
    reply = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    sent = upstream.bodies[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["tool_choice"] == "required"
