"""The usage ledger's writer: one transaction a round under a steady load, nothing lost at close."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from interference.keys import ledger as ledger_module
from interference.keys.ledger import Ledger, LedgerEntry


def _entry(n: int) -> LedgerEntry:
    return LedgerEntry(
        time=f"2026-12-04T00:00:{n % 60:02d}Z",
        key_name="k",
        model="m",
        route="chat",
        status=200,
        prompt_tokens=n,
        completion_tokens=1,
        cached_tokens=0,
        ttft_ms=None,
        duration_ms=1.0,
    )


def test_entries_that_come_during_a_write_wait_for_the_next_round() -> None:
    """A request that ends while a batch is being written is in the next round's batch, a linger
    later, not in a transaction of its own straight after (a commit a request under a steady load)."""
    ledger = Ledger("/nonexistent/unused.db")
    calls: list[tuple[float, float, list[int]]] = []
    second = threading.Event()

    def sink(batch: list[LedgerEntry]) -> None:
        start = time.monotonic()
        if not calls:
            ledger.record(_entry(100))  # arrives while this batch is written
            ledger.record(_entry(101))
        calls.append((start, time.monotonic(), [e.prompt_tokens for e in batch]))
        if len(calls) == 2:
            second.set()

    ledger.send_to(sink)
    ledger.start()
    try:
        for n in range(3):
            ledger.record(_entry(n))
        assert second.wait(10)
        assert ledger.flush(10)
    finally:
        ledger.close()
    assert [c[2] for c in calls] == [[0, 1, 2], [100, 101]]
    first_end, second_start = calls[0][1], calls[1][0]
    assert second_start - first_end >= ledger_module.LINGER * 0.9  # a round's linger lies between


def test_close_writes_everything_queued_in_order(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    ledger = Ledger(path)
    ledger.start()
    total = ledger_module.BATCH * 2 + 5
    for n in range(total):
        ledger.record(_entry(n))
    ledger.close()  # before the writer's first round is over: what is queued is still written
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT prompt_tokens FROM usage ORDER BY rowid").fetchall()
    assert [r[0] for r in rows] == list(range(total))
    assert ledger.dropped == 0


def test_a_round_is_written_batch_entries_a_transaction() -> None:
    ledger = Ledger("/nonexistent/unused.db")
    batches: list[list[int]] = []
    ledger.send_to(lambda batch: batches.append([e.prompt_tokens for e in batch]))
    ledger.start()
    total = ledger_module.BATCH * 2 + 5
    for n in range(total):
        ledger.record(_entry(n))
    ledger.close()
    assert [n for batch in batches for n in batch] == list(range(total))
    assert len(batches) >= 3 and all(0 < len(batch) <= ledger_module.BATCH for batch in batches)


def test_an_idle_writer_sleeps_until_an_entry_comes() -> None:
    """No rounds while nothing is queued (an idle server should not wake up 20 times a second); the
    first entry after a quiet spell wakes the writer and is written a linger later."""
    rounds: list[int] = []

    class Counted(Ledger):
        def _drain(self, conn: sqlite3.Connection | None, count: int) -> None:
            rounds.append(count)
            super()._drain(conn, count)

    written: list[int] = []
    ledger = Counted("/nonexistent/unused.db")
    ledger.send_to(lambda batch: written.extend(e.prompt_tokens for e in batch))
    ledger.start()
    try:
        time.sleep(ledger_module.LINGER * 6)
        assert rounds == []  # six lingers with nothing queued: the writer slept through them
        ledger.record(_entry(7))
        assert ledger.flush(10)
        assert written == [7]
        seen = len(rounds)
        time.sleep(ledger_module.LINGER * 6)
        assert len(rounds) == seen  # idle again: asleep again
        ledger.record(_entry(8))
        assert ledger.flush(10)
        assert written == [7, 8]
    finally:
        ledger.close()
    assert written == [7, 8]
