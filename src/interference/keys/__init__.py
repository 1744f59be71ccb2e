"""Named API keys, their limits, and the usage ledger."""

from .keyfile import KeyFileError, KeySpec, KeyTable, add_key, hash_key, new_key
from .ledger import GROUPS, Ledger, LedgerEntry, default_usage_db, summarize
from .limits import Concurrency, InProcessLimits, Limits, Quota, RedisLimits, Ticket, build_limits

__all__ = [
    "GROUPS",
    "Concurrency",
    "InProcessLimits",
    "KeyFileError",
    "KeySpec",
    "KeyTable",
    "Ledger",
    "LedgerEntry",
    "Limits",
    "Quota",
    "RedisLimits",
    "Ticket",
    "add_key",
    "build_limits",
    "default_usage_db",
    "hash_key",
    "new_key",
    "summarize",
]
