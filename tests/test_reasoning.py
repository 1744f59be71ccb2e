"""Reasoning split off a thinking model's output, and which chat templates have a thinking mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from interference.engine.chat_template import CHATML_TEMPLATE, ChatTemplate
from interference.providers.base import Delta, TokenUsage
from interference.providers.reasoning import ReasoningSplitter, split_reasoning

# The parts of real templates that tell (abridged from the models' tokenizer_config.json).
QWEN3 = (
    "{%- if message.role == 'assistant' %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{%- endif %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
DEEPSEEK_R1 = (
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<\uff5cAssistant\uff5c>' + content + '<\uff5cend\u2581of\u2581sentence\uff5c>'}}{% endif %}"
)
SMOLLM3 = (
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{%- set reasoning_mode = '/no_think' -%}"
    "{%- endif -%}{{ '<|im_start|>assistant\\n' }}"
)


@pytest.mark.parametrize(("source", "thinks"), [(QWEN3, True), (DEEPSEEK_R1, True), (SMOLLM3, True)])
def test_templates_of_thinking_models_have_a_thinking_mode(source: str, thinks: bool) -> None:
    assert ChatTemplate(source).has_thinking_mode is thinks


def test_plain_templates_have_none() -> None:
    assert not ChatTemplate(CHATML_TEMPLATE).has_thinking_mode
    assert not ChatTemplate(None).has_thinking_mode


def _split(pieces: list[str], *, opened: bool) -> tuple[str, str]:
    splitter = ReasoningSplitter(opened=opened)
    reasoning, answer = [], []
    for i, piece in enumerate(pieces):
        r, a = splitter.feed(piece, final=i == len(pieces) - 1)
        reasoning.append(r)
        answer.append(a)
    return "".join(reasoning), "".join(answer)


def _cuts(text: str) -> list[list[str]]:
    """``text`` cut in two at every position, and cut into single characters."""
    return [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]


@pytest.mark.parametrize(
    ("text", "opened", "expected"),
    [
        ("<think>\nabout it</think>\n\nThe answer.", False, ("\nabout it", "The answer.")),
        ("  <think>x</think>y", False, ("x", "y")),
        ("about it</think>\nThe answer.", True, ("about it", "The answer.")),
        ("only thoughts, cut by max_tokens", True, ("only thoughts, cut by max_tokens", "")),
        ("No tags at all.", False, ("", "No tags at all.")),
        ("<thin", False, ("", "<thin")),  # ends before it could be a tag: text after all
        ("a </thin", True, ("a </thin", "")),
        ("x</think>later <think>is text</think>", True, ("x", "later <think>is text</think>")),
    ],
)
def test_every_chunk_boundary_splits_alike(text: str, opened: bool, expected: tuple[str, str]) -> None:
    for pieces in _cuts(text):
        assert _split(pieces, opened=opened) == expected, pieces


def test_split_reasoning_keeps_usage_and_finish() -> None:
    async def deltas() -> AsyncIterator[Delta]:
        yield Delta(text="why", usage=TokenUsage(10, 0))
        yield Delta(text=" so</thi")
        yield Delta(text="nk>\nBecause.")
        yield Delta(text="", finish_reason="stop", usage=TokenUsage(10, 4))

    async def run() -> list[Delta]:
        return [d async for d in split_reasoning(deltas(), opened=True)]

    out = asyncio.run(run())
    assert "".join(d.reasoning for d in out) == "why so"
    assert "".join(d.text for d in out) == "Because."
    assert out[0].usage == TokenUsage(10, 0)
    assert out[-1].finish_reason == "stop" and out[-1].usage == TokenUsage(10, 4)
    # Reasoning comes before the answer, never in the same delta after it.
    first_text = next(i for i, d in enumerate(out) if d.text)
    assert all(not d.reasoning for d in out[first_text + 1 :])
