"""The usage ledger: one SQLite row per request, written in batches by a thread off the event loop.

``record`` only appends the entry to a bounded queue (``QUEUE_BOUND`` entries); when the queue is full
the entry is dropped and counted (``dropped``), so a slow disk never stalls serving. Every ``LINGER``
seconds the writer thread commits what queued up before that round, ``BATCH`` entries a transaction, with
``synchronous=NORMAL`` (WAL: a power cut may lose the last batches, never the file). A commit per
request, and a thread wake-up per request, cost more CPU than proxying the request. With nothing queued
the writer sleeps until the next entry comes (only that one wakes it), so an idle server does not wake
up for it. ``flush`` waits for what is queued, so a report read after it includes every request that
ended before it. Several processes that serve one application can hand their batches to a single
writer instead (``send_to``).
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["GROUPS", "Ledger", "LedgerEntry", "default_usage_db", "summarize"]

logger = logging.getLogger(__name__)

Sink = Callable[[list["LedgerEntry"]], None]

QUEUE_BOUND = 10_000
BATCH = 256
LINGER = 0.05  # seconds between the writer's rounds: a batch gathers what came in meanwhile
GROUPS = ("key", "model", "day", "route")
Group = Literal["key", "model", "day", "route"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    time TEXT NOT NULL,              -- ISO 8601, UTC, when the request ended
    key_name TEXT,                   -- the keys file's name; NULL for --api-key keys and no auth
    model TEXT,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    ttft_ms REAL,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_time ON usage (time);
"""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    time: str
    key_name: str | None
    model: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None
    duration_ms: float


def default_usage_db(env: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/interference/usage.db``, else ``~/.local/share/interference/usage.db``."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "interference" / "usage.db"


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    return conn


class Ledger:
    """Owns the writer thread; ``start`` and ``close`` are called by the app's lifespan."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Appended by the event loop, drained by the writer: no lock and no wake-up per request.
        self._pending: collections.deque[LedgerEntry] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Set by the first entry after the writer went idle (and by close): the writer's wake-up.
        self._wake = threading.Event()
        self._idle = False
        self.dropped = 0
        self._done = threading.Condition()
        self._queued = 0  # entries queued, and those written (or given up on)
        self._written = 0
        self._sink: Sink | None = None

    def send_to(self, sink: Sink) -> None:
        """Hand each batch to ``sink`` (one writer for several processes) instead of writing ``path``.

        Call it before ``start``. A batch the sink fails on is logged and lost, like a failed write."""
        self._sink = sink

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._sink is None:
            connect(self.path).close()  # fail at start-up, not on the first request
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    def record(self, entry: LedgerEntry) -> None:
        if self._thread is None:
            return  # not started, or it could not open its file
        if len(self._pending) >= QUEUE_BOUND:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("usage ledger queue full: %d entries dropped so far", self.dropped)
            return
        self._pending.append(entry)
        self._queued += 1
        if self._idle:  # after the append: a writer that saw nothing queued is asleep or about to be
            self._idle = False
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the entries queued so far are written; False if that took over ``timeout``."""
        target = self._queued
        with self._done:
            return self._done.wait_for(lambda: self._written >= target or self._thread is None, timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None
            with self._done:
                self._done.notify_all()

    def _run(self) -> None:
        conn = connect(self.path) if self._sink is None else None
        try:
            while True:
                self._sleep_while_idle()
                stopping = self._stop.wait(LINGER)
                # What queued up before this round, and only that: under a steady load entries keep
                # coming while a batch is written, and writing those at once made a commit (and a turn
                # at the GIL) every request or two instead of one a round.
                self._drain(conn, len(self._pending))
                if stopping:
                    self._drain(conn, len(self._pending))  # what came in meanwhile: the last entries
                    return
        finally:
            if conn is not None:
                conn.close()

    def _sleep_while_idle(self) -> None:
        """Block until an entry is queued (or ``close``): no rounds while nothing comes in."""
        self._wake.clear()
        self._idle = True  # before looking: an entry appended after this sets the event
        if not self._pending and not self._stop.is_set():
            self._wake.wait()
        self._idle = False

    def _drain(self, conn: sqlite3.Connection | None, count: int) -> None:
        """Write the ``count`` oldest entries, ``BATCH`` a transaction."""
        while count > 0:
            batch = [self._pending.popleft() for _ in range(min(BATCH, count))]
            count -= len(batch)
            self._write(conn, batch)
            with self._done:
                self._written += len(batch)
                self._done.notify_all()

    def _write(self, conn: sqlite3.Connection | None, batch: list[LedgerEntry]) -> None:
        if conn is None:
            assert self._sink is not None
            try:
                self._sink(batch)
            except Exception:
                logger.exception("usage ledger: could not hand over %d entries", len(batch))
            return
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?,?)", [astuple(e) for e in batch]
                )
        except sqlite3.Error:
            logger.exception("usage ledger: could not write %d entries", len(batch))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_GROUP_SQL = {
    "key": "COALESCE(key_name, '-')",
    "model": "COALESCE(model, '-')",
    "day": "substr(time, 1, 10)",
    "route": "route",
}


def summarize(
    path: str | os.PathLike[str], *, since: str | None = None, group_by: Group = "key"
) -> list[dict[str, Any]]:
    """Totals per group since a date or time (ISO 8601, UTC), largest first."""
    column = _GROUP_SQL[group_by]
    where, args = ("WHERE time >= ?", [since]) if since else ("", [])
    sql = (
        f"SELECT {column} AS grp, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
        f"SUM(cached_tokens), SUM(status >= 400), AVG(ttft_ms) FROM usage {where} "
        "GROUP BY grp ORDER BY SUM(prompt_tokens + completion_tokens) DESC, grp"
    )
    conn = connect(path)
    try:
        rows = conn.execute(sql, args).fetchall()
    finally:
        conn.close()
    return [
        {
            group_by: grp,
            "requests": n,
            "prompt_tokens": p or 0,
            "completion_tokens": c or 0,
            "total_tokens": (p or 0) + (c or 0),
            "cached_tokens": cached or 0,
            "errors": errors or 0,
            "avg_ttft_ms": round(ttft, 1) if ttft is not None else None,
        }
        for grp, n, p, c, cached, errors, ttft in rows
    ]
