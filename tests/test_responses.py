"""POST /v1/responses (Responses API, text) on the local engine and through an upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from conftest import RunningServer, running_server
from fake_upstream import PIECES, FakeUpstream

MODEL = "gpt-4o"  # an alias of the embedded chat model
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
UNSUPPORTED = "unsupported_parameter"
STREAM_TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def _events(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.responses.create(stream=True, **kwargs))


def _check_stream(events: list[Any]) -> Any:
    """Event order, numbering and text consistency of one streamed response; returns the final response."""
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == STREAM_ORDER
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) : -1] == STREAM_TAIL
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert final.id == created.id and final.id.startswith("resp_")
    text = "".join(d.delta for d in deltas)
    done = events[4 + len(deltas)]
    assert done.text == text == final.output_text
    item_id = events[2].item.id
    assert item_id.startswith("msg_") and all(d.item_id == item_id for d in deltas)
    assert events[-2].item.content[0].text == text
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    return final


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# ---------------------------------------------------------------------- local engine, non-streaming


def test_string_input(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=24, temperature=0)
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == MODEL
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.text == response.output_text and part.annotations == []
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert response.max_output_tokens == 24 and response.temperature == 0


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Write a long story about a dragon.", max_output_tokens=3, temperature=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.output_text


def test_instructions_and_message_items(client: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada!"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ]
    short = client.responses.create(model=MODEL, input=items, instructions="Be terse.", max_output_tokens=8)
    long_instructions = "Be terse. " + "Answer in one short sentence and never greet the user. " * 4
    guided = client.responses.create(
        model=MODEL, input=items, instructions=long_instructions, max_output_tokens=8
    )
    assert guided.instructions == long_instructions
    assert guided.output_text
    assert short.usage is not None and guided.usage is not None
    # The instructions went in as the system message: 40 more words, 40 more input tokens.
    assert guided.usage.input_tokens >= short.usage.input_tokens + 40


def test_metadata_echoed_and_store_accepted(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Hi", max_output_tokens=4, metadata={"trace": "t-1"}, store=True
    )
    assert response.metadata == {"trace": "t-1"}
    assert response.store is True
    assert client.responses.retrieve(response.id).metadata == {"trace": "t-1"}


# ---------------------------------------------------------------------- local engine, streaming


def test_stream_events(client: openai.OpenAI) -> None:
    events = _events(client, model=MODEL, input="Count to five.", max_output_tokens=12)
    final = _check_stream(events)
    assert final.output_text
    assert 0 < final.usage.output_tokens <= 12


def test_stream_incomplete(client: openai.OpenAI) -> None:
    events = _events(client, model=MODEL, input="Write a long story about a dragon.", max_output_tokens=4)
    final = _check_stream(events)
    assert events[-1].type == "response.incomplete"
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 4


def test_sse_framing(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "Hello", "stream": True, "max_output_tokens": 6}
    with server.http() as http, http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    kinds = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == event_line.removeprefix("event: ")
        kinds.append(payload["type"])
    assert "[DONE]" not in raw  # the Responses API ends with its last event, not a sentinel
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")


def test_wire_shape(server: RunningServer) -> None:
    with server.http() as http:
        body = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 4}).json()
    for key in ("id", "object", "created_at", "status", "output", "usage", "model", "tools", "tool_choice"):
        assert key in body
    assert "output_text" not in body  # the SDKs compute it; OpenAI does not send it
    assert isinstance(body["created_at"], int)
    assert set(body["usage"]) == {
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "total_tokens",
    }


def test_disconnect_frees_the_slot(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "Write a very long story.", "stream": True, "max_output_tokens": 400}
    with server.http() as http, http.stream("POST", "/v1/responses", json=body) as response:
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                break
    _wait_for(lambda: server.metrics()["interference_engine_slots_active"] == 0)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi", "conversation": "conv_1"}, "conversation", UNSUPPORTED),
        ({"input": "hi", "background": True}, "background", UNSUPPORTED),
        ({"input": ""}, "input", None),
        ({"input": []}, "input", None),
        ({"input": [{"type": 7}]}, "input[0]", None),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", None),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
         "input[0].content[0].type", None),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role", None),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", None),
        ({"input": "hi", "tools": [{"name": "f"}]}, "tools[0]", None),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", None),
        ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice", None),
        ({"input": "hi", "tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "function", "name": "g"}}, "tool_choice", None),
        ({"input": "hi", "temperature": 3}, "temperature", None),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", None),
        ({}, "input", None),
    ],
)  # fmt: skip
def test_bad_requests_are_400s(
    server: RunningServer, body: dict[str, Any], param: str, code: str | None
) -> None:
    with server.http() as http:
        response = http.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_errors_come_before_the_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="word " * 9000, stream=True)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi", stream=True)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="text-embedding-3-small", input="hi")
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "model"


# ---------------------------------------------------------------------- through an upstream


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, FakeUpstream]]]:
    tmp = tmp_path_factory.mktemp("responses-gateway")
    up = {"ok": FakeUpstream().start(), "torn": FakeUpstream(mode="torn").start()}
    config = tmp / "gateway.toml"
    config.write_text(
        "\n".join(
            f'[[models]]\nname = "up-{name}"\n[[models.deployments]]\ntype = "openai"\n'
            f'base_url = "{upstream.url}"\nmodel = "upstream-{name}"\n'
            for name, upstream in up.items()
        )
    )
    try:
        with running_server("--config", str(config), "--no-embeddings", tmp=tmp) as server:
            yield server, up
    finally:
        for upstream in up.values():
            upstream.stop()


def test_upstream_non_stream(gateway: tuple[RunningServer, dict[str, FakeUpstream]]) -> None:
    server, up = gateway
    response = server.client().responses.create(
        model="up-ok", input="Say hello.", instructions="Be nice.", max_output_tokens=50, temperature=0.5
    )
    assert response.output_text == "".join(PIECES)
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, len(PIECES))
    assert response.usage.input_tokens_details.cached_tokens == 4
    sent = up["ok"].bodies[-1]
    assert sent["model"] == "upstream-ok"
    assert sent["messages"] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Say hello."},
    ]
    assert sent["max_completion_tokens"] == 50 and sent["temperature"] == 0.5
    assert not sent.get("stream")


def test_upstream_stream(gateway: tuple[RunningServer, dict[str, FakeUpstream]]) -> None:
    server, up = gateway
    events = _events(server.client(), model="up-ok", input="Say hello.")
    final = _check_stream(events)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == list(PIECES)
    assert final.usage.output_tokens == len(PIECES)
    assert up["ok"].bodies[-1]["stream_options"] == {"include_usage": True}


def test_failure_mid_stream_is_an_error_event(gateway: tuple[RunningServer, dict[str, FakeUpstream]]) -> None:
    server, _ = gateway
    events = _events(server.client(), model="up-torn", input="Say hello.")
    kinds = [e.type for e in events]
    assert kinds[:4] == STREAM_ORDER
    assert kinds[-1] == "error"
    assert "response.completed" not in kinds
    assert events[-1].message and events[-1].sequence_number == len(events) - 1


def test_sdk_stream_helper(gateway: tuple[RunningServer, dict[str, FakeUpstream]]) -> None:
    server, _ = gateway
    with server.client().responses.stream(model="up-ok", input="Say hi.") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(texts) == "".join(PIECES)
    assert final.status == "completed"
