"""Stored responses: SQLite in the data dir, owned by the key that made them, bounded by count, bytes and age.

Each row holds one response object and the whole input it answered (the stored history that its own
``previous_response_id`` named included), so a later request can continue it even once the responses
before it have left the store. Bounds, applied at every save, oldest first: ``max_count`` responses,
``max_bytes`` of stored JSON, ``max_age`` seconds; a response larger than ``max_bytes`` alone is not
stored. A response is visible only to its owner: any other owner is told it does not exist.

SQLite calls run in a worker thread (``asyncio.to_thread``), one at a time on one connection. A store
that cannot be opened or written logs the failure and answers as an empty store: serving goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

__all__ = ["ResponseStore", "StoreBounds", "default_responses_db"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    response BLOB NOT NULL,  -- the response object, JSON
    items BLOB NOT NULL      -- its whole input, JSON list of items
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""


def default_responses_db(env: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/interference/responses.db``, else ``~/.local/share/interference/responses.db``."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "interference" / "responses.db"


@dataclass(frozen=True, slots=True)
class StoreBounds:
    max_count: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]
    items: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, path: str | os.PathLike[str], bounds: StoreBounds | None = None) -> None:
        self.path = Path(path)
        self.bounds = bounds or StoreBounds()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._failed = False

    # ------------------------------------------------------------------ connection

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._failed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                self._conn = conn
            except (OSError, sqlite3.Error) as exc:
                self._failed = True
                logger.error("stored responses are off: cannot open %s: %s", self.path, exc)
        return self._conn

    def _locked(self, work: Callable[[sqlite3.Connection], T], failed: str, response_id: Any) -> T | None:
        """``work`` on the connection, under the lock; None when the store is off or SQLite fails (logged
        as ``failed`` % (response_id, error))."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                return work(conn)
            except sqlite3.Error as exc:
                logger.error(failed, response_id, exc)
                return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ the async surface

    async def save(self, response: dict[str, Any], items: list[dict[str, Any]], *, owner: str) -> bool:
        return await asyncio.to_thread(self.save_now, response, items, owner=owner)

    async def get(self, response_id: str, *, owner: str) -> Stored | None:
        return await asyncio.to_thread(self.get_now, response_id, owner=owner)

    async def delete(self, response_id: str, *, owner: str) -> bool:
        return await asyncio.to_thread(self.delete_now, response_id, owner=owner)

    async def history(self, response_id: str, *, owner: str) -> list[dict[str, Any]] | None:
        """The conversation a new request continues: the stored input, then the response's output."""
        stored = await self.get(response_id, owner=owner)
        if stored is None:
            return None
        return [*stored.items, *stored.response.get("output", [])]

    # ------------------------------------------------------------------ the work, in a thread

    def save_now(self, response: dict[str, Any], items: list[dict[str, Any]], *, owner: str) -> bool:
        body = orjson.dumps(response)
        listed = orjson.dumps(items)
        size = len(body) + len(listed)
        if size > self.bounds.max_bytes:
            logger.warning(
                "response %s not stored: %d bytes, over the store's bound", response.get("id"), size
            )
            return False

        def insert(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                    (response["id"], owner, time.time(), size, body, listed),
                )
                self._evict(conn)
            return True

        return self._locked(insert, "response %s not stored: %s", response.get("id")) or False

    def _evict(self, conn: sqlite3.Connection) -> None:
        bounds = self.bounds
        conn.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - bounds.max_age,))
        count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM responses").fetchone()
        if count <= bounds.max_count and total <= bounds.max_bytes:
            return
        doomed: list[str] = []
        for row_id, size in conn.execute("SELECT id, bytes FROM responses ORDER BY created_at, rowid"):
            if count <= bounds.max_count and total <= bounds.max_bytes:
                break
            doomed.append(row_id)
            count -= 1
            total -= size
        conn.executemany("DELETE FROM responses WHERE id = ?", [(row_id,) for row_id in doomed])

    def get_now(self, response_id: str, *, owner: str) -> Stored | None:
        row = self._locked(
            lambda conn: conn.execute(
                "SELECT response, items, created_at FROM responses WHERE id = ? AND owner = ?",
                (response_id, owner),
            ).fetchone(),
            "stored response %s unreadable: %s",
            response_id,
        )
        if row is None or row[2] < time.time() - self.bounds.max_age:
            return None
        return Stored(orjson.loads(row[0]), orjson.loads(row[1]))

    def delete_now(self, response_id: str, *, owner: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with conn:
                cursor = conn.execute(
                    "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
                )
            return cursor.rowcount > 0

        return self._locked(delete, "stored response %s not deleted: %s", response_id) or False
