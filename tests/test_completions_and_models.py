"""Text completions and the models endpoints through the openai SDK."""

from __future__ import annotations

import openai
import pytest

DEFAULT_ALIASES = {"gpt-3.5-turbo", "gpt-3.5-turbo-16k", "gpt-4", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini"}


def test_completion_string_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="gpt-3.5-turbo", prompt="Once upon a time", max_tokens=12, temperature=0
    )
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.completion_tokens <= 12


def test_completion_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="gpt-3.5-turbo", prompt="The list of numbers: 1, 2, 3,", temperature=0
    )
    assert r.usage is not None and r.usage.completion_tokens <= 16


def test_completion_list_of_one_prompt_matches_string(client: openai.OpenAI) -> None:
    a = client.completions.create(model="gpt-3.5-turbo", prompt="The sky is", max_tokens=8, temperature=0)
    b = client.completions.create(model="gpt-3.5-turbo", prompt=["The sky is"], max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_completion_streaming(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo",
            prompt="Once upon a time",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_completion_echo(client: openai.OpenAI) -> None:
    r = client.completions.create(model="gpt-3.5-turbo", prompt="Roses are red,", max_tokens=5, echo=True)
    assert r.choices[0].text.startswith("Roses are red,")


def test_models_list_has_model_and_aliases(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "SmolLM2-135M-Instruct.Q4_1" in ids
    assert set(ids) >= DEFAULT_ALIASES
    assert all(m.object == "model" and m.owned_by for m in models.data)


def test_models_retrieve(client: openai.OpenAI) -> None:
    for name in ("SmolLM2-135M-Instruct.Q4_1", "gpt-4o-mini"):
        m = client.models.retrieve(name)
        assert m.id == name
        assert m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
