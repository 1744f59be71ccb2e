"""Structured output, tools, logprobs, n, embeddings and responses through an upstream deployment.

The upstream is a real OpenAI-compatible server: interference itself, serving the embedded model on
its own port. The gateway in front of it knows the model only as an ``openai`` deployment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from conftest import RunningServer, running_server

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 50_000_000},
        "sights": {
            "type": "array",
            "items": {"type": "string", "maxLength": 30},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["city", "population", "sights"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up in the dictionary.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string", "maxLength": 30}},
            "required": ["word"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "Describe a city."}]


@pytest.fixture(scope="module")
def gateway(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    tmp: Path = tmp_path_factory.mktemp("passthrough")
    config = tmp / "gateway.toml"
    config.write_text(
        f"""
[[models]]
name = "remote-chat"
[[models.deployments]]
type = "openai"
base_url = "{server.url}/v1"
model = "gpt-4o"
api_key = "sk-upstream"

[[models]]
name = "remote-embed"
[[models.deployments]]
type = "openai"
base_url = "{server.url}/v1"
model = "text-embedding-3-small"
api_key = "sk-upstream"
"""
    )
    with running_server("--config", str(config), "--no-embeddings", tmp=tmp) as gw:
        yield gw.client()


def test_json_schema_through_upstream(gateway: openai.OpenAI) -> None:
    r = gateway.chat.completions.create(
        model="remote-chat",
        messages=ASK,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
        max_tokens=200,
        seed=3,
    )
    assert r.model == "remote-chat"
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)


def test_tool_calls_through_upstream(gateway: openai.OpenAI) -> None:
    r = gateway.chat.completions.create(
        model="remote-chat",
        messages=[{"role": "user", "content": "What does 'serendipity' mean?"}],
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        max_tokens=100,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup"
    jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])  # type: ignore[index]
    chunks = list(
        gateway.chat.completions.create(
            model="remote-chat",
            messages=[{"role": "user", "content": "Define 'tree'."}],
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
            max_tokens=200,
            temperature=0,  # a sampled answer can ramble inside the arguments until max_tokens
        )
    )
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces and pieces[0].id and pieces[0].function and pieces[0].function.name == "lookup"


def test_n_and_logprobs_through_upstream(gateway: openai.OpenAI) -> None:
    r = gateway.chat.completions.create(
        model="remote-chat", messages=ASK, n=2, max_tokens=6, logprobs=True, top_logprobs=2, seed=5
    )
    assert [c.index for c in r.choices] == [0, 1]
    for choice in r.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    streamed = list(
        gateway.chat.completions.create(model="remote-chat", messages=ASK, n=2, max_tokens=4, stream=True)
    )
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_embeddings_and_responses_through_upstream(gateway: openai.OpenAI) -> None:
    e = gateway.embeddings.create(model="remote-embed", input=["a tree", "a forest"], dimensions=64)
    assert [len(d.embedding) for d in e.data] == [64, 64]
    assert e.usage.prompt_tokens > 0
    r = gateway.responses.create(model="remote-chat", input="Say hello.", max_output_tokens=8)
    assert r.output_text
    assert r.usage is not None and r.usage.output_tokens <= 8
