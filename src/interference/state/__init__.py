"""State the server keeps between requests: stored responses (SQLite), owned by the key that made them."""

from .responses import ResponseStore, StoreBounds, Stored, default_responses_db

__all__ = ["ResponseStore", "StoreBounds", "Stored", "default_responses_db"]
