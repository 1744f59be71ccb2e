"""Chat completions through the openai SDK (>= 1) against the real server."""

from __future__ import annotations

import openai
import pytest

from conftest import RunningServer

POEM = [{"role": "user", "content": "write a poem about a tree"}]


def test_chat_non_streaming_shape_and_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=POEM, max_tokens=40, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "gpt-3.5-turbo"
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = r.usage
    assert usage is not None
    assert usage.prompt_tokens > 5
    assert 1 <= usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=POEM, max_tokens=30, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert content_chunks
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens <= 30
    assert (
        usage_chunk.usage.total_tokens
        == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    )


def test_stream_and_non_stream_agree_at_temperature_zero(client: openai.OpenAI) -> None:
    kwargs = dict(model="gpt-3.5-turbo", messages=POEM, max_tokens=25, temperature=0)
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
        if c.choices
    )
    assert streamed == whole.choices[0].message.content


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=POEM, max_tokens=7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 7


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=POEM, max_completion_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def _greedy(client: openai.OpenAI, **kwargs: object) -> tuple[str, str | None]:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=POEM,
        temperature=0,
        max_tokens=60,
        **kwargs,  # type: ignore[call-overload]
    )
    return r.choices[0].message.content or "", r.choices[0].finish_reason


def test_stop_sequence_truncates_and_is_not_emitted(client: openai.OpenAI) -> None:
    full, _ = _greedy(client)
    words = full.split()
    assert len(words) > 6, full
    # A stop string that spans several tokens, taken from the middle of the greedy answer.
    stop = " ".join(words[3:5])
    cut = full.index(stop)
    text, finish = _greedy(client, stop=[stop, "zzzz-never"])
    assert finish == "stop"
    assert text == full[:cut]
    assert stop not in text
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gpt-3.5-turbo", messages=POEM, temperature=0, max_tokens=60, stop=stop, stream=True
        )
        if c.choices
    )
    assert streamed == full[:cut]


def test_single_string_stop(client: openai.OpenAI) -> None:
    full, _ = _greedy(client)
    stop = full.split()[2]
    text, finish = _greedy(client, stop=stop)
    assert finish == "stop"
    assert stop not in text
    assert full.startswith(text)


def test_seed_gives_same_output(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Tell me a story about a fox."}],
            temperature=1.0,
            seed=seed,
            max_tokens=40,
        )
        return r.choices[0].message.content or ""

    first = sample(1234)
    assert sample(1234) == first
    others = {sample(s) for s in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should not all give the same text"


def test_penalties_user_and_unknown_fields_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one."},
        ],
        presence_penalty=0.5,
        frequency_penalty=0.5,
        top_p=0.9,
        user="user-42",
        max_tokens=10,
        extra_body={"some_vendor_field": {"x": 1}, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
    )
    assert r.choices[0].message.content is not None
    assert r.choices[0].finish_reason in ("stop", "length")


def test_aliases_and_model_id_all_answer(client: openai.OpenAI, server: RunningServer) -> None:
    embedding_ids = {
        "all-MiniLM-L6-v2",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    }
    ids = [m.id for m in client.models.list().data if m.id not in embedding_ids]
    for name in ids:
        r = client.chat.completions.create(model=name, messages=POEM, max_tokens=2)
        assert r.model == name


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=POEM)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["param"] == "model"
