"""The prefill policy (engine/prefill.py) on its own: step budgets from the measured cost, the prompts'
order, where a step ends, and the KV room reserved in that order. Pure logic, no model."""

from __future__ import annotations

from interference.engine.prefill import MIN_PREFILL, PrefillPolicy


def _policy(*, n_batch: int = 2048, chunk: int = 512, step_target: float = 0.0) -> PrefillPolicy:
    return PrefillPolicy(n_batch=n_batch, chunk=chunk, step_target=step_target)


def test_alone_a_prompt_fills_the_batch_beside_streams_it_gets_a_chunk() -> None:
    policy = _policy()
    assert policy.budget(0) == 2048
    assert policy.budget(8) == 512 - 8
    assert policy.budget(500) == MIN_PREFILL  # waiting prompts progress however many streams decode
    assert policy.budget(2040) == 8  # never past the batch
    assert _policy(n_batch=512, chunk=4096).budget(4) == 508  # the chunk is capped by the batch


def test_the_chunk_shrinks_to_keep_a_step_within_its_time_target() -> None:
    policy = _policy(step_target=0.5)
    assert policy.budget(8) == 504  # nothing measured yet: the whole chunk
    policy.observe(8, 0, 0.08)  # a decode-only step: 10 ms per row
    policy.observe(8, 200, 0.08 + 200 * 0.004)  # 4 ms per prompt token
    assert policy.row_seconds == 0.01
    assert policy.token_seconds is not None and abs(policy.token_seconds - 0.004) < 1e-9
    assert 100 <= policy.budget(8) <= 105  # (0.5 s - 8 rows) / 4 ms: about 0.5 s in all
    assert policy.budget(0) == 2048  # no stream waits: the target does not apply
    policy.observe(8, 200, 8.0)  # much slower steps now: the estimate follows, never below the floor
    assert policy.budget(8) == MIN_PREFILL
    assert _policy(step_target=0.0).budget(8) == 504  # no target: chunks of --batch-size


def test_in_a_storm_prompts_fill_the_batch_beside_running_streams() -> None:
    policy = _policy(n_batch=512, step_target=0.5)
    policy.observe(8, 0, 0.08)
    policy.observe(8, 200, 0.08 + 200 * 0.004)
    kept = policy.budget(8)
    assert kept < 504  # the time target bites beside eight streams
    assert policy.budget(8, n_waiting=8) == kept  # as many waiting as decoding: streams keep their pace
    assert policy.budget(8, n_waiting=9) == 512 - 8  # more wait for a first token: the whole batch
    prompts = [("a", 300, 0.0), ("b", 300, 0.0)]
    taken = policy.plan(2, prompts, room=10_000, now=0.0, n_waiting=2)
    assert sum(n for _, n in taken) == policy.budget(2) < 600  # two waiting beside two streams: target
    taken = policy.plan(2, prompts, room=10_000, now=0.0, n_waiting=3)  # a third conversation queued
    assert sum(n for _, n in taken) == 510  # three waiting beside two streams: the whole batch


def test_admissions_that_move_kv_are_one_a_step_beside_streams_but_not_in_a_storm() -> None:
    assert PrefillPolicy.one_move_a_step(4, n_waiting=1) is True  # streams keep their pace
    assert PrefillPolicy.one_move_a_step(4, n_waiting=4) is True
    assert PrefillPolicy.one_move_a_step(4, n_waiting=5) is False  # a storm: every free slot at once
    assert PrefillPolicy.one_move_a_step(0, n_waiting=1) is False  # nobody decodes: nobody waits on it


def test_costs_are_running_averages() -> None:
    policy = _policy(step_target=1.0)
    policy.observe(4, 0, 0.04)
    policy.observe(4, 0, 0.08)
    assert policy.row_seconds is not None and 0.01 < policy.row_seconds < 0.02
    policy.observe(0, 100, 0.5)
    policy.observe(0, 100, 1.5)
    assert policy.token_seconds is not None and 0.005 < policy.token_seconds < 0.015


def test_shortest_remaining_prompt_goes_first_ties_by_age() -> None:
    policy = _policy()
    prompts = [("long", 900, 1.0), ("short", 100, 2.0), ("mid", 300, 3.0), ("twin", 100, 1.5)]
    assert [p[0] for p in policy.order(prompts, now=3.0)] == ["twin", "short", "mid", "long"]


def test_age_counts_against_length_so_a_long_prompt_is_not_starved() -> None:
    policy = _policy()
    policy.observe(0, 100, 1.0)  # 100 prompt tokens a second
    old = ("old", 1000, 0.0)
    assert [p[0] for p in policy.order([old, ("fresh", 300, 5.0)], now=5.0)] == ["fresh", "old"]
    # After waiting about as long as its own prefill, the old prompt goes before any fresh one.
    assert [p[0] for p in policy.order([old, ("fresh", 300, 8.0)], now=8.0)] == ["old", "fresh"]


def test_prompts_fill_the_budget_in_order_the_last_in_part() -> None:
    policy = _policy(n_batch=512)
    two = [("a", 300, 1.0), ("b", 300, 2.0)]
    assert policy.plan(0, two, room=10_000, now=2.0) == [("a", 300), ("b", 212)]
    three = [("a", 100, 1.0), ("b", 150, 2.0), ("c", 200, 3.0), ("d", 400, 4.0)]
    assert policy.plan(0, three, room=10_000, now=4.0) == [("a", 100), ("b", 150), ("c", 200), ("d", 62)]
    # A prompt longer than the budget goes on alone, a budget at a time.
    assert policy.plan(0, [("long", 5000, 1.0)], room=10_000, now=1.0) == [("long", 512)]
    assert policy.plan(4, [("long", 5000, 1.0)], room=10_000, now=1.0) == [("long", 508)]
    # Shortest first: an old long prompt comes after fresh short ones until its age catches up.
    policy.observe(0, 100, 1.0)  # 100 prompt tokens a second: x's age puts it before y
    mixed = [("w", 50, 5.0), ("x", 480, 1.0), ("y", 100, 5.0)]
    assert policy.plan(0, mixed, room=10_000, now=5.0) == [("w", 50), ("x", 462)]


def test_kv_room_is_reserved_in_the_policys_order() -> None:
    policy = _policy(n_batch=4096, chunk=4096)
    prompts = [("big", 600, 1.0), ("small", 100, 2.0)]
    # Room for the small one only: it goes, the big one waits and takes nothing.
    assert policy.plan(0, prompts, room=300, now=2.0) == [("small", 100)]
    # Room for both: the big one starts too.
    assert policy.plan(0, prompts, room=700, now=2.0) == [("small", 100), ("big", 600)]
    # The first in order does not fit: nothing behind it may take its room.
    assert policy.plan(0, [("big", 600, 1.0), ("bigger", 700, 2.0)], room=650, now=2.0) == [("big", 600)]
    assert policy.plan(0, [("big", 600, 1.0)], room=500, now=2.0) == []
    assert policy.plan(0, [], room=500, now=2.0) == []
