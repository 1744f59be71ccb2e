"""Per-key request and token limits, in fixed one-minute windows, in-process or in Redis.

A window is a clock minute (``floor(unix_time / 60)``; in Redis, by Redis's own clock, so replicas
agree). Admission is atomic: it checks ``requests + 1 <= rpm`` and ``tokens + reserve <= tpm`` and
counts both only when both hold. ``settle`` then corrects the admission window's tokens by
``actual - reserved`` (and gives everything back for a refused request).

``max_concurrent`` is held by the same backend: in-process a count per key (``Concurrency``); in
Redis a lease per request in a sorted set per key, so replicas share it. A lease lasts ``LEASE``
seconds and the replica that holds it renews it every ``LEASE / 4`` while the request runs, so the
leases of a replica that dies free themselves within ``LEASE`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import LimitsUnavailable, RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "LEASE",
    "WINDOW",
    "Concurrency",
    "InProcessLimits",
    "LimitExceeded",
    "Limits",
    "Quota",
    "RedisLimits",
    "Ticket",
    "build_limits",
]

WINDOW = 60  # seconds


@dataclass(frozen=True, slots=True)
class Quota:
    """What a key has left in the current window, for the ``x-ratelimit-*`` headers."""

    rpm: int | None
    tpm: int | None
    requests: int  # counted in this window, this request included
    tokens: int
    reset: float  # seconds until the window ends

    def headers(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        reset = f"{max(1, math.ceil(self.reset))}s".encode()
        for kind, limit, used in (("requests", self.rpm, self.requests), ("tokens", self.tpm, self.tokens)):
            if limit is None:
                continue
            out += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, limit - used)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), reset),
            ]
        return out


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request: which window it was counted in and how many tokens it reserved."""

    name: str
    window: int
    reserved: int
    quota: Quota


class Limits(Protocol):
    async def hold(self, name: str, limit: int | None) -> object:
        """Count one request in flight for ``name``, or raise ``RateLimited`` at ``limit``."""
        ...

    async def release(self, name: str, held: object) -> None:
        """End what ``hold`` returned."""
        ...

    async def admit(self, name: str, *, rpm: int | None, tpm: int | None, reserve: int) -> Ticket:
        """Count one request and reserve tokens, or raise ``RateLimited``/``LimitsUnavailable``."""
        ...

    async def settle(self, ticket: Ticket, *, tokens: int, refused: bool) -> None:
        """Replace the reservation with the tokens used; a refused request gives everything back."""
        ...

    async def aclose(self) -> None: ...


class LimitExceeded(RateLimited):
    """A 429 from a key's rpm or tpm, with the window's counts for the ``x-ratelimit-*`` headers."""

    def __init__(self, message: str, *, retry_after: float, quota: Quota, kind: str = "requests") -> None:
        super().__init__(message, retry_after=retry_after)
        self.quota = quota
        self.type = kind  # OpenAI's error type names the limit: "requests" (rpm) or "tokens" (tpm)


def _refusal(
    name: str, rpm: int | None, tpm: int | None, requests: int, tokens: int, reserve: int, reset: float
) -> LimitExceeded:
    kind = "tokens"
    if rpm is not None and requests + 1 > rpm:
        kind, what = "requests", f"requests per min (RPM): Limit {rpm}, Used {requests}, Requested 1"
    elif tpm is not None and reserve > tpm:
        what = (
            f"tokens per min (TPM): Limit {tpm}, Requested {reserve} (prompt estimate, plus max_tokens "
            "on generating routes), more than the limit allows"
        )
    else:
        what = f"tokens per min (TPM): Limit {tpm}, Used {tokens}, Requested {reserve}"
    return LimitExceeded(
        f"Rate limit reached for key '{name}' on {what}.",
        retry_after=max(1, math.ceil(reset)),
        quota=Quota(rpm, tpm, requests, tokens, reset),
        kind=kind,
    )


@dataclass(slots=True)
class _Window:
    index: int
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class InProcessLimits:
    """Counters in this process: the default, for a single server."""

    clock: Callable[[], float] = time.time
    _windows: dict[str, _Window] = field(default_factory=dict)
    _held: Concurrency = field(default_factory=lambda: Concurrency())

    async def hold(self, name: str, limit: int | None) -> object:
        self._held.acquire(name, limit)
        return name

    async def release(self, name: str, held: object) -> None:
        self._held.release(name)

    async def admit(self, name: str, *, rpm: int | None, tpm: int | None, reserve: int) -> Ticket:
        now = self.clock()
        index = int(now // WINDOW)
        reset = (index + 1) * WINDOW - now
        w = self._windows.get(name)
        if w is None or w.index != index:
            w = self._windows[name] = _Window(index)
        if (rpm is not None and w.requests + 1 > rpm) or (tpm is not None and w.tokens + reserve > tpm):
            raise _refusal(name, rpm, tpm, w.requests, w.tokens, reserve, reset)
        w.requests += 1
        w.tokens += reserve
        return Ticket(name, index, reserve, Quota(rpm, tpm, w.requests, w.tokens, reset))

    async def settle(self, ticket: Ticket, *, tokens: int, refused: bool) -> None:
        w = self._windows.get(ticket.name)
        if w is None or w.index != ticket.window:
            return  # that window is over; its counts no longer matter
        if refused:
            w.requests -= 1
            w.tokens -= ticket.reserved
        else:
            w.tokens += tokens - ticket.reserved

    async def aclose(self) -> None:
        self._windows.clear()


# KEYS[1]: the key's counter prefix. ARGV: rpm, tpm (0: none), reserve, window length.
# Returns {admitted, window, requests, tokens, milliseconds to reset}.
_ADMIT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[4])
local window = math.floor(now_ms / (len * 1000))
local reset_ms = (window + 1) * len * 1000 - now_ms
local rk = KEYS[1] .. ':' .. window .. ':r'
local tk = KEYS[1] .. ':' .. window .. ':t'
local r = tonumber(redis.call('GET', rk) or '0')
local tok = tonumber(redis.call('GET', tk) or '0')
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if (rpm > 0 and r + 1 > rpm) or (tpm > 0 and tok + n > tpm) then
  return {0, window, r, tok, reset_ms}
end
r = redis.call('INCR', rk)
tok = redis.call('INCRBY', tk, n)
redis.call('EXPIRE', rk, len * 2)
redis.call('EXPIRE', tk, len * 2)
return {1, window, r, tok, reset_ms}
"""

# KEYS[1]: prefix. ARGV: window, request delta, token delta. Only touches a window that still exists.
_SETTLE = """
local rk = KEYS[1] .. ':' .. ARGV[1] .. ':r'
local tk = KEYS[1] .. ':' .. ARGV[1] .. ':t'
if redis.call('EXISTS', tk) == 1 then
  redis.call('INCRBY', rk, ARGV[2])
  redis.call('INCRBY', tk, ARGV[3])
end
return 1
"""


# KEYS[1]: the key's lease set. ARGV: lease id, limit (0: none), lease seconds. Drops expired leases.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
if limit > 0 and held >= limit then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) * 2)
return {1, held + 1}
"""

# KEYS: lease sets; ARGV: lease seconds, then one lease id per key. Renews the leases still held.
_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) * 2)
end
return 1
"""

LEASE = 120.0  # seconds a request's max_concurrent lease lasts between renewals (Redis backend)


class RedisLimits:
    """Counters in Redis, shared by every replica that points at it; each update is one Lua script."""

    def __init__(self, url: str, *, fail_open: bool = False, prefix: str = "interference:limits") -> None:
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._hold = self._redis.register_script(_HOLD)
        self._renew = self._redis.register_script(_RENEW)
        self._fail_open = fail_open
        self._prefix = prefix
        self._leases: dict[str, str] = {}  # lease id -> its set, while the request runs
        self._renewer: asyncio.Task[None] | None = None

    async def hold(self, name: str, limit: int | None) -> object:
        from redis.exceptions import RedisError

        if limit is None:
            return None  # nothing to share: the lease set only matters against a limit
        lease, key = uuid.uuid4().hex, f"{self._key(name)}:held"
        try:
            ok, held = await self._hold(keys=[key], args=[lease, limit, LEASE])
        except (RedisError, OSError) as exc:
            if self._fail_open:
                return None
            raise LimitsUnavailable(
                "The rate-limit store cannot be reached, so limited keys are refused for now."
            ) from exc
        if not ok:
            raise RateLimited(
                f"Key '{name}' already has {int(held)} requests in flight (max_concurrent {limit}).",
                retry_after=1,
            )
        self._leases[lease] = key
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())
        return lease

    async def release(self, name: str, held: object) -> None:
        from redis.exceptions import RedisError

        if not isinstance(held, str) or self._leases.pop(held, None) is None:
            return
        # If this fails the lease expires by itself within LEASE seconds.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(f"{self._key(name)}:held", held)

    async def _renew_leases(self) -> None:
        from redis.exceptions import RedisError

        while self._leases:
            await asyncio.sleep(LEASE / 4)
            leases = list(self._leases.items())
            if leases:
                with contextlib.suppress(RedisError, OSError):
                    await self._renew(
                        keys=[k for _, k in leases], args=[LEASE, *(lease for lease, _ in leases)]
                    )

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    async def admit(self, name: str, *, rpm: int | None, tpm: int | None, reserve: int) -> Ticket:
        from redis.exceptions import RedisError

        try:
            ok, window, requests, tokens, reset_ms = await self._admit(
                keys=[self._key(name)], args=[rpm or 0, tpm or 0, reserve, WINDOW]
            )
        except (RedisError, OSError) as exc:
            if self._fail_open:
                return Ticket(name, -1, reserve, Quota(rpm, tpm, 0, 0, WINDOW))
            raise LimitsUnavailable(
                "The rate-limit store cannot be reached, so limited keys are refused for now."
            ) from exc
        reset = int(reset_ms) / 1000
        if not ok:
            raise _refusal(name, rpm, tpm, int(requests), int(tokens), reserve, reset)
        return Ticket(name, int(window), reserve, Quota(rpm, tpm, int(requests), int(tokens), reset))

    async def settle(self, ticket: Ticket, *, tokens: int, refused: bool) -> None:
        from redis.exceptions import RedisError

        if ticket.window < 0:
            return
        delta_r, delta_t = (-1, -ticket.reserved) if refused else (0, tokens - ticket.reserved)
        # If this fails the window expires by itself; a lost correction only errs on the strict side.
        with contextlib.suppress(RedisError, OSError):
            await self._settle(keys=[self._key(ticket.name)], args=[ticket.window, delta_r, delta_t])

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self._redis.aclose()


@dataclass(slots=True)
class Concurrency:
    """Requests each key has in flight in this process, against its ``max_concurrent``."""

    _held: dict[str, int] = field(default_factory=dict)

    def acquire(self, name: str, limit: int | None) -> None:
        held = self._held.get(name, 0)
        if limit is not None and held >= limit:
            raise RateLimited(
                f"Key '{name}' already has {held} requests in flight (max_concurrent {limit}).", retry_after=1
            )
        self._held[name] = held + 1

    def release(self, name: str) -> None:
        held = self._held.get(name, 0) - 1
        if held > 0:
            self._held[name] = held
        else:
            self._held.pop(name, None)


def build_limits(backend: str, *, fail_open: bool) -> Limits:
    """``"memory"`` (the default), or a ``redis://host:port/db`` URL."""
    if backend.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimits(backend, fail_open=fail_open)
    return InProcessLimits()
