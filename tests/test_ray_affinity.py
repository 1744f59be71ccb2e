"""The bookkeeping behind prefix-affine routing: prefix chains, the bounded table, the first replica."""

from __future__ import annotations

import pytest

from interference.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, MessagesRequest
from interference.ray.affinity import PROMPT_BLOCK_CHARS, AffinityTable, home, prefix_hashes


def _chat(*messages: tuple[str, str], tools: list[object] | None = None) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}
    if tools is not None:
        body["tools"] = tools
    return ChatCompletionRequest.model_validate(body)


def test_each_turn_extends_the_chain_of_the_turn_before() -> None:
    turn = [("system", "be brief"), ("user", "hi")]
    first, opening = prefix_hashes(_chat(*turn), "m")
    second, _ = prefix_hashes(_chat(*turn, ("assistant", "yo"), ("user", "and?")), "m")
    assert len(first) == 2 and len(second) == 4
    assert second[:2] == first
    assert opening == 1  # the first user message: the system prompt alone does not tell conversations apart


def test_model_tools_and_content_change_the_chain() -> None:
    base, _ = prefix_hashes(_chat(("user", "hi")), "m")
    assert prefix_hashes(_chat(("user", "hi")), "other")[0] != base
    assert prefix_hashes(_chat(("user", "hello")), "m")[0] != base
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert prefix_hashes(_chat(("user", "hi"), tools=[tool]), "m")[0] != base


def test_messages_requests_chain_after_their_system_prompt() -> None:
    def request(system: str, *turns: str) -> MessagesRequest:
        roles = ["user", "assistant"]
        messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
        body = {"model": "m", "max_tokens": 4, "system": system, "messages": messages}
        return MessagesRequest.model_validate(body)

    one, _ = prefix_hashes(request("s", "hi"), "m")
    two, _ = prefix_hashes(request("s", "hi", "yo", "more"), "m")
    assert two[:1] == one
    assert prefix_hashes(request("other", "hi"), "m")[0] != one


def test_completion_prompts_chain_by_blocks() -> None:
    text = "x" * (PROMPT_BLOCK_CHARS * 2 + 10)

    def request(prompt: str) -> CompletionRequest:
        return CompletionRequest.model_validate({"model": "m", "prompt": prompt})

    short, _ = prefix_hashes(request(text), "m")
    longer, _ = prefix_hashes(request(text + "y" * 300), "m")
    assert len(short) == 3
    assert longer[:2] == short[:2] and longer[2] != short[2]


def test_requests_without_a_prompt_have_no_chain() -> None:
    assert prefix_hashes(EmbeddingRequest.model_validate({"model": "m", "input": "hi"}), "m") == ([], 0)


def test_the_table_finds_the_longest_prefix_a_live_replica_holds() -> None:
    table: AffinityTable[str] = AffinityTable(100)
    chain = [b"a", b"b", b"c"]
    table.record(chain[:2], "r1")
    table.record(chain, "r2")
    assert table.lookup(chain, ["r1", "r2"]) == "r2"
    assert table.lookup([b"a", b"b", b"z"], ["r1", "r2"]) == "r2"  # "b" moved to r2 with the longer prompt
    assert table.lookup(chain, ["r1"]) is None  # r2 is gone
    table.forget("r2")
    assert len(table) == 0


def test_the_table_is_bounded_least_recently_used_first() -> None:
    table: AffinityTable[str] = AffinityTable(3)
    table.record([b"1", b"2", b"3"], "r")
    assert table.lookup([b"1"], ["r"]) == "r"  # 1 is now the most recent
    table.record([b"4"], "r")
    assert len(table) == 3
    assert table.lookup([b"2"], ["r"]) is None
    assert table.lookup([b"1"], ["r"]) == "r"
    with pytest.raises(ValueError):
        AffinityTable(0)


def test_the_first_replica_is_stable_and_spreads_conversations() -> None:
    replicas = ["r1", "r2", "r3", "r4"]
    openings = [prefix_hashes(_chat(("user", f"conversation {i}")), "m")[0][0] for i in range(200)]
    chosen = [home(o, replicas) for o in openings]
    assert chosen == [home(o, list(reversed(replicas))) for o in openings]  # order does not matter
    assert all(chosen.count(r) > 20 for r in replicas)
    # A replica that goes away moves only its own conversations.
    without = [home(o, replicas[:3]) for o in openings]
    assert all(a == b for a, b in zip(chosen, without, strict=True) if a != "r4")
