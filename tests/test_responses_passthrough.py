"""/v1/responses forwarded untranslated to deployments that serve it (``responses = true``)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from conftest import RunningServer, running_server
from fake_upstream import PIECES, FakeUpstream

Upstreams = dict[str, FakeUpstream]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Upstreams]]:
    tmp = tmp_path_factory.mktemp("responses-native")
    up = {name: FakeUpstream().start() for name in ("native", "flaky", "steady", "chat")}
    up["flaky"].mode = "500"

    def deployment(name: str, *, native: bool = True) -> str:
        flag = "responses = true\n" if native else ""
        return (
            f'[[models.deployments]]\ntype = "openai"\nbase_url = "{up[name].url}"\n'
            f'model = "upstream-{name}"\n{flag}'
        )

    config = tmp / "gateway.toml"
    config.write_text(
        '[[models]]\nname = "native"\n'
        + deployment("native")
        + '[[models]]\nname = "failover"\n'
        + deployment("flaky")
        + deployment("steady")
        + '[[models]]\nname = "chat"\n'
        + deployment("chat", native=False)
    )
    try:
        with running_server("--config", str(config), "--no-embeddings", tmp=tmp) as server:
            yield server, up
    finally:
        for upstream in up.values():
            upstream.stop()


def test_body_arrives_untranslated(gateway: tuple[RunningServer, Upstreams]) -> None:
    server, up = gateway
    client = server.client()
    tools = [
        {"type": "web_search"},
        {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}},
    ]
    sent = [{"role": "user", "content": [{"type": "input_text", "text": "Look it up."}]}]
    response = client.responses.create(
        model="native",
        input=sent,  # type: ignore[arg-type]
        instructions="Be brief.",
        tools=tools,  # type: ignore[arg-type]
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "low"},
        store=False,
        extra_body={"prompt_cache_key": "k1", "parallel_tool_calls": False},
    )
    assert response.output_text == "".join(PIECES) and response.model == "native"
    assert up["native"].bodies[-1] == {
        "model": "upstream-native",
        "input": sent,
        "instructions": "Be brief.",
        "tools": tools,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low"},
        "store": False,
        "prompt_cache_key": "k1",
        "parallel_tool_calls": False,
    }
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(response.id)


def test_stream_relayed_and_stored(gateway: tuple[RunningServer, Upstreams]) -> None:
    server, up = gateway
    client = server.client()
    events = list(client.responses.create(model="native", input="Stream.", stream=True))
    assert [e.type for e in events] == [
        "response.created",
        *["response.output_text.delta"] * len(PIECES),
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events[1:-1]) == "".join(PIECES)
    final = events[-1].response
    assert final.model == "native" and up["native"].bodies[-1]["stream"] is True
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "".join(PIECES) and stored.model == "native"


def test_previous_response_id(gateway: tuple[RunningServer, Upstreams]) -> None:
    server, up = gateway
    client = server.client()
    ours = client.responses.create(model="chat", input="First turn.", instructions="Old.")
    client.responses.create(model="native", input="Second turn.", previous_response_id=ours.id)
    forwarded = up["native"].bodies[-1]
    assert "previous_response_id" not in forwarded  # ours: expanded here
    assert forwarded["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "First turn."}]},
        {
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "".join(PIECES), "annotations": [], "logprobs": []}],
        },
        {"role": "user", "content": "Second turn."},
    ]
    assert "instructions" not in forwarded
    client.responses.create(model="native", input="Go on.", previous_response_id="resp_theirs")
    assert up["native"].bodies[-1]["previous_response_id"] == "resp_theirs"  # not ours: as sent


def test_failover_to_the_next_native_deployment(gateway: tuple[RunningServer, Upstreams]) -> None:
    server, up = gateway
    client = server.client()
    for _ in range(2):  # round robin: one of the two starts at the failing deployment
        assert client.responses.create(model="failover", input="Hi.").output_text == "".join(PIECES)
    assert up["flaky"].hits == 1  # then it cools down
    assert up["steady"].hits == 2
    assert up["steady"].bodies[-1]["model"] == "upstream-steady"
