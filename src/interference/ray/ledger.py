"""One usage ledger for the whole application: a deployment of one replica that every ingress feeds.

Each ingress replica's ``Ledger`` hands its batches to this deployment (``Ledger.send_to``) instead
of writing a file of its own, so the application has a single SQLite file, written by one process,
whatever the number of ingress replicas and nodes. The file is ``usage_db`` (or the default path) on
the node that holds the ledger replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..keys.ledger import Ledger, LedgerEntry, Sink, default_usage_db

__all__ = ["HANDOVER_TIMEOUT", "UsageLedger", "forward_to"]

# Seconds an ingress waits for the ledger replica to take a batch before it logs the batch as lost.
HANDOVER_TIMEOUT = 30.0


class UsageLedger:
    """The single writer: entries from every ingress replica go through one ``Ledger``."""

    def __init__(self, usage_db: str | None) -> None:
        self._ledger = Ledger(usage_db or default_usage_db())
        self._ledger.start()

    async def write(self, entries: list[LedgerEntry]) -> int:
        """Record ``entries`` and return once they are committed (an ingress's ``flush`` then means
        its requests are in the file)."""
        for entry in entries:
            self._ledger.record(entry)
        await asyncio.to_thread(self._ledger.flush)
        return len(entries)

    def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down
        self._ledger.close()


def forward_to(handle: Any) -> Sink:
    """A ``Ledger`` sink that hands each batch to the ledger deployment and waits for it to take it."""

    def sink(batch: list[LedgerEntry]) -> None:
        handle.write.remote(batch).result(timeout_s=HANDOVER_TIMEOUT)

    return sink
